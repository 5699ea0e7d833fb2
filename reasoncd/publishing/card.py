"""The model card of an export: Hub metadata (YAML header: base models, data sets, evaluation results) and the
text a user reads first (what the model does, usage, prompt format, evaluation, limitations, citation)."""

import json
import re
from pathlib import Path

from reasoncd.evaluation.metrics import METRIC_TITLES
from reasoncd.loading import HUB_ID
from reasoncd.publishing.source import ExportError

PAPER_TITLE = "ReasonCD: A Multimodal Reasoning Large Model for Implicit Change-of-Interest Semantic Mining"
PAPER_AUTHORS = "Huang, Zhenyang and Yu, Xiao and Zhang, Yi and Wang, Decheng and Ruan, Hang"
CARD_TAGS = ["custom_code", "change-detection", "remote-sensing", "image-segmentation"]
# The paper's components, recognised by their sizes when the config does not name them.
PAPER_LLM = ("meta-llama/Llama-2-7b-chat-hf",
             {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008})
PAPER_CLIP = ("openai/clip-vit-large-patch14", {"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14})
SAM_BY_WIDTH = {(768, 12): "facebook/sam-vit-base", (1024, 24): "facebook/sam-vit-large",
                (1280, 32): "facebook/sam-vit-huge"}
RANDOM_PRESETS = ("tiny", "medium")
RANDOM_PRESET_NOTE = """**This is the `{name}` preset: small components that start from random weights, for tests,
benchmarks and demonstrations. It knows at most the built-in synthetic data; do not use it on real imagery.**"""


def _matches(config, sizes: dict) -> bool:
    return all(getattr(config, key, None) == value for key, value in sizes.items())


def base_models(config) -> list[str]:
    """Hub ids of the pretrained components: as the sub-configs record them, else the paper's by their sizes."""
    found = []
    for sub_config, (paper_id, sizes) in ((config.text_config, PAPER_LLM), (config.vision_config, PAPER_CLIP)):
        recorded = getattr(sub_config, "_name_or_path", "") or ""
        if HUB_ID.fullmatch(recorded) and not Path(recorded).exists():
            found.append(recorded)
        elif _matches(sub_config, sizes):
            found.append(paper_id)
    sam = SAM_BY_WIDTH.get((config.sam_config.encoder_embed_dim, config.sam_config.encoder_depth))
    return found + ([sam] if sam else [])


def random_preset(config) -> str | None:
    """The name of the preset built from random weights (build_tiny) that this config has the sizes of, if any."""
    from configuration_reasoncd import PRESETS

    for name in RANDOM_PRESETS:
        preset = PRESETS.get(name)
        if preset and all(_matches(getattr(config, part), {"hidden_size": preset[part]["hidden_size"],
                                                           "num_hidden_layers": preset[part]["num_hidden_layers"]})
                          for part in ("text_config", "vision_config")):
            return name
    return None


def _format(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_section(metrics: dict) -> str:
    """The card's evaluation section: the pixel metrics, per question kind, and how the answers did."""
    lines = ["| " + " | ".join(METRIC_TITLES.values()) + " |", "|" + "---|" * len(METRIC_TITLES),
             "| " + " | ".join(_format(metrics.get(key, "")) for key in METRIC_TITLES) + " |"]
    text = ["## Evaluation", "",
            "Pixel metrics from the global confusion matrix over all test pixels (change = positive); gIoU is the "
            "mean per-sample IoU, cIoU the total intersection over the total union; free generation (the model "
            "decides itself whether to answer with `[SEG]`).", "", *lines]
    groups = metrics.get("groups") or {}
    if groups:
        text += ["", "By question kind:", "", "| kind | samples | F1 | IoU | gIoU |", "|---|---|---|---|---|"]
        text += [f"| {name} | {g.get('n_samples', '')} | {_format(g.get('f1', ''))} | {_format(g.get('iou', ''))} | "
                 f"{_format(g.get('giou', ''))} |" for name, g in groups.items()]
    answers = metrics.get("text") or {}
    emitted, absent = answers.get("seg_emission_rate"), answers.get("absent_accuracy")
    if emitted is not None:
        text += ["", f"Answers: `[SEG]` emitted for {emitted:.1%} of the questions whose change is present."]
    if absent is not None:
        text += ["", f"Absent changes recognised (no `[SEG]`) for {absent:.1%} of the questions whose change is "
                 "absent."]
    multi = metrics.get("multi_target") or {}
    if multi.get("n_questions"):
        text += ["", f"Questions about several changes ({multi['n_questions']}): per-target F1 "
                 f"{_format(multi['target_f1'])} (each mask matched to its truth by the words naming it), "
                 f"{_percent(multi['t_acc'])} of the present changes found, {_percent(multi['n_acc'])} of the absent "
                 f"ones refused, {_percent(multi['count_accuracy'])} of the answers with the right number of masks."]
    return "\n".join(text)


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def build_card(*, config, processor, repo_id: str, metrics: dict | None, datasets: list[str],
               base_ids: list[str], parameters: int | None, adapter_base: str | None = None):
    """The model card: Hub metadata (YAML header) and the text a user reads first."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    eval_results = None
    if metrics and datasets:
        eval_results = [EvalResult(task_type="image-segmentation", task_name="Change detection",
                                   dataset_type=datasets[0], dataset_name=datasets[0], dataset_split="test",
                                   metric_type=key, metric_name=name, metric_value=round(float(metrics[key]), 4))
                        for key, name in METRIC_TITLES.items() if isinstance(metrics.get(key), (int, float))]
    data = ModelCardData(
        library_name="peft" if adapter_base else "transformers",
        pipeline_tag="image-text-to-text",
        tags=CARD_TAGS + (["lora"] if adapter_base else []),
        base_model=adapter_base or base_ids or None,
        datasets=datasets or None,
        metrics=[key for key in METRIC_TITLES if metrics and key in metrics] or None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results,
        license="llama2" if any("llama-2" in b.lower() for b in base_ids) else None,
    )
    example_prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "changes that provide more living areas for people"}],
        chat_template=processor.chat_template, tokenize=False)
    text, vision, sam = config.text_config, config.vision_config, config.sam_config
    size = f"{parameters / 1e6:,.1f} M parameters; " if parameters else ""
    fusion_config = config.feature_fusion_config
    width = "" if fusion_config.resnet_base_width == 64 else f" ({fusion_config.resnet_base_width}-channel stem)"
    fusion = f"ResNet-{fusion_config.resnet_depth}{width} + FPN" if config.use_feature_fusion else "off"
    components = (f"{size}language model {text.model_type} ({text.hidden_size} wide, {text.num_hidden_layers} "
                  f"layers), CLIP vision tower at {vision.image_size} px ({config.image_seq_length} tokens per image), "
                  f"SAM image encoder {sam.encoder_embed_dim} wide × {sam.encoder_depth} blocks at "
                  f"{sam.image_size} px, feature fusion {fusion}")
    if adapter_base:
        usage = f"""```python
from peft import PeftModel
from transformers import AutoModel, AutoProcessor

base = AutoModel.from_pretrained("{adapter_base}", trust_remote_code=True)
model = PeftModel.from_pretrained(base, "{repo_id}").merge_and_unload().eval()
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
inputs = processor(images_t1=t1, images_t2=t2, text=["new buildings"])  # PIL images or HxWx3 uint8 arrays
results = processor.post_process_generation(model.generate(**inputs, max_new_tokens=64))
```

This repository holds a PEFT adapter (LoRA on the language model, its new token rows, and the projector,
`text_hidden_fc`, SAM mask decoder and fusion module trained in full) for the base model
[`{adapter_base}`](https://huggingface.co/{adapter_base}); it must be applied to exactly those base weights."""
    else:
        usage = f"""```python
from transformers import pipeline

detector = pipeline("change-detection", model="{repo_id}", trust_remote_code=True)
result = detector({{"image_t1": "t1.png", "image_t2": "t2.png", "text": "new buildings"}})
print(result["text"], f"{{result['changed_fraction']:.1%}} changed")
result["mask"].save("change.png")  # mode L, 0 = unchanged, 255 = change, the inputs' size

# Several questions about one pair: the images are encoded once, one answer per question.
detector({{"image_t1": "t1.png", "image_t2": "t2.png",
          "text": ["new buildings", "changes caused by heavy rainfall, and explain why"]}})
```

Images may be paths, URLs, PIL images or arrays. Without the pipeline:

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
inputs = processor(images_t1=t1, images_t2=t2, text=["new buildings"])  # PIL images or HxWx3 uint8 arrays
outputs = model.generate(**inputs, max_new_tokens=64)
for result in processor.post_process_generation(outputs):
    print(result["text"], result["mask"].shape)  # bool mask of the inputs' size
```

The Hub's inference widget does not run custom code. `handler.py` serves the model on Inference Endpoints:
send `{{"inputs": {{"image_t1": <base64>, "image_t2": <base64>, "text": "new buildings"}}, "parameters":
{{"max_new_tokens": 64}}}}` and get `{{"text", "raw_text", "mask" (base64 PNG), "changed_fraction"}}` back (a list for
a list of questions). `text` is the answer for a reader; `raw_text` keeps the model's `[SEG]` token."""
    preset = random_preset(config)
    random_note = RANDOM_PRESET_NOTE.format(name=preset) if preset else ""
    training = (f"Trained and evaluated on: {', '.join(datasets)}." if datasets else
                "The training data was not recorded at export.")
    if metrics and metrics.get("n_samples"):
        training += f" The evaluation below covers {metrics['n_samples']} test questions."
    evaluation = metrics_section(metrics) if metrics else ""
    body = f"""# {repo_id.split('/')[-1]}

ReasonCD answers a question about the change between two co-registered remote-sensing images of one place (T1
earlier, T2 later): the question names a change of interest explicitly ("new buildings"), implicitly ("changes that
provide more living areas for people") or asks for an explanation ("changes caused by heavy rainfall, and explain
why"). The model answers in text and, where the answer holds the `[SEG]` token, with a binary change mask of the
input size; when the change of interest is absent it says so and the mask is empty. The same pair answers different
questions without retraining.

CLIP encodes both dates for the language model, which reasons over the prompt; the hidden state that predicts
`[SEG]` prompts SAM's mask decoder, whose image embedding fuses SAM and ResNet-FPN features of both dates.
Components: {components}.

{random_note}

## Usage

Install `transformers>=5.24`, `torch`, `torchvision` and `segment-anything`, then:

{usage}

## Prompt format

The processor's chat template wraps the question (here "changes that provide more living areas for people"):

```
{example_prompt}
```

`<T1>` and `<T2>` are each expanded to {config.image_seq_length} image tokens, which the model fills with projected
CLIP features. Answers are plain ("It's [SEG]." or, naming the change, "It's the new buildings: [SEG]."), an
explanation ending with `[SEG]`, or a sentence without `[SEG]` when the change of interest is absent. A question about
several changes is answered with one `[SEG]` per change that happened, each after the words naming it, and the
others in words ("The new buildings [SEG] and the new water bodies [SEG]; there are no new playgrounds."); each
`[SEG]` gives its own mask (`targets` in `post_process_generation`), and `mask` is their union.

{evaluation}

## Training data

{training}

## Limitations

- Custom code: load with `trust_remote_code=True`. The code imports `segment-anything` and `torchvision`; both must
  be installed or loading fails.
- Both dates must be co-registered RGB images of the same size. CLIP sees each date at {vision.image_size} px and
  SAM at {sam.image_size} px (longest side), so changes much smaller than a SAM patch of the resized image may be
  missed; tile large scenes. 16-bit and float images are scaled to 8 bit per image.
- The answer and the mask come from one model: a wrong answer without `[SEG]` gives an empty mask.
- Implicit questions rely on the training question bank; phrasings far from it are less reliable.

## Citation

```bibtex
@misc{{huang2025reasoncd,
  title  = {{{PAPER_TITLE}}},
  author = {{{PAPER_AUTHORS}}},
  year   = {{2025}}
}}
```
"""
    body = re.sub(r"\n{3,}", "\n\n", body)  # sections left out leave no gaps
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def read_metrics(path: Path | None) -> dict | None:
    """The evaluation figures for the card (train.py's or eval.py's metrics.json); None when no file is named."""
    if path is None:
        return None
    if not path.is_file():
        raise ExportError(f"--metrics {path}: no such file")
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"--metrics {path}: not JSON ({error})") from None
    if not isinstance(metrics, dict) or not any(key in metrics for key in METRIC_TITLES):
        raise ExportError(f"--metrics {path}: none of {', '.join(METRIC_TITLES)} found (expected train.py's "
                          "metrics.json)")
    return metrics
