"""A small LLaMA-style BPE tokenizer trained offline on ReasonCD's own text (for the `tiny` preset)."""

import random
import string

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from processing_reasoncd import DEFAULT_CHAT_TEMPLATE, NEW_TOKENS, SEG_TOKEN

from reasoncd.data.questions import corpus as question_corpus

# LLaMA's special tokens keep LLaMA's ids 0, 1, 2; `<unk>` doubles as padding (no pad token is added).
LLAMA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def training_corpus(seed: int) -> list[str]:
    """Every sentence ReasonCD's data and prompt use, shuffled by `seed`."""
    lines = list(question_corpus())
    prompt = DEFAULT_CHAT_TEMPLATE.split("[INST]")[1].split("[/INST]")[0].replace("{{ message['content'] }}", "")
    for token in NEW_TOKENS:  # these become special tokens, not words to merge
        prompt = prompt.replace(token, " ")
    lines += [prompt] * 20
    lines += ["[INST]", "[/INST]", "It's a change map.", "There is no change of interest between the two images."]
    random.Random(seed).shuffle(lines)
    return lines


def train_tiny_tokenizer(seed: int = 0, vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """
    Trains a byte-pair-encoding tokenizer with LLaMA's conventions (`▁` word marker, `<unk>`/`<s>`/`</s>` at 0/1/2)
    and adds the five ReasonCD tokens as single ids. Deterministic for a seed.
    """
    model = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(LLAMA_SPECIAL_TOKENS),
        initial_alphabet=sorted(set(string.printable.strip()) | {"▁"}),
        show_progress=False,
    )
    model.train_from_iterator(training_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>",
        padding_side="left",
    )
    add_reasoncd_tokens(tokenizer)
    return tokenizer


def add_reasoncd_tokens(tokenizer) -> list[int]:
    """Adds `<T1> <T2> <p> </p> [SEG]` as special tokens where missing; returns their ids (each a single id)."""
    missing = [t for t in NEW_TOKENS if t not in tokenizer.added_tokens_encoder]
    if missing:
        # `[SEG]` swallows the space before it: otherwise " [SEG]" puts a bare word-start token in front, and the
        # state that predicts [SEG] (the mask decoder's prompt) would sit on that same token in every answer.
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, lstrip=t == SEG_TOKEN) for t in missing],
                             special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    ids = [tokenizer.convert_tokens_to_ids(t) for t in NEW_TOKENS]
    for token, token_id in zip(NEW_TOKENS, ids):
        if tokenizer.encode(token, add_special_tokens=False) != [token_id]:
            raise ValueError(f"{token!r} does not encode to the single id {token_id}")
    return ids
