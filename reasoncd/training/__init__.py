"""Training parts: LoRA, the frozen-feature cache, the dataset and collator, the tokenizer."""
