"""Export a trained ReasonCD model as a Hugging Face Hub repository folder (and optionally push it).

    python export.py --run runs/quickstart --output_dir exports/reasoncd-quickstart
    python export.py --run runs/mine/checkpoints/checkpoint-800 --output_dir exports/mine --dataset SECOND \
        --metrics runs/mine/metrics.json
    python export.py --run runs/mine --output_dir exports/mine --push_to_hub ORG/NAME [--private]
    python export.py --run runs/mine/checkpoints/checkpoint-800 --adapter_only --base_model_id ORG/reasoncd-7b-init \
        --output_dir exports/mine-adapter

--run takes a train.py run folder (its model/ and metrics.json), a merged model folder, or a PEFT checkpoint-N
(loaded on its base model and merged). The full export holds safetensors weights, the remote code, the processor,
generation_config.json, the `change-detection` pipeline, an Inference Endpoints handler and a model card; the
adapter export holds the PEFT adapter, the processor and a card. Nothing of training (optimizer state, data,
checkpoints, training code) is exported.
"""

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from reasoncd.evaluation.metrics import METRIC_TITLES
from reasoncd.io import MARKER, OutputDir, OutputDirError, read_marker
from reasoncd.loading import HUB_ID

REPO = Path(__file__).resolve().parent
HANDLER_FILE = REPO / "handler.py"
PIPELINE_TASK = "change-detection"
PAPER_TITLE = "ReasonCD: A Multimodal Reasoning Large Model for Implicit Change-of-Interest Semantic Mining"
PAPER_AUTHORS = "Huang, Zhenyang and Yu, Xiao and Zhang, Yi and Wang, Decheng and Ruan, Hang"
CARD_TAGS = ["custom_code", "change-detection", "remote-sensing", "image-segmentation"]
# The paper's components, recognised by their sizes when the config does not name them.
PAPER_LLM = ("meta-llama/Llama-2-7b-chat-hf", {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008})
PAPER_CLIP = ("openai/clip-vit-large-patch14", {"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14})
SAM_BY_WIDTH = {(768, 12): "facebook/sam-vit-base", (1024, 24): "facebook/sam-vit-large",
                (1280, 32): "facebook/sam-vit-huge"}
# What an endpoint needs beyond its base image: the remote code imports segment_anything and torchvision.
REQUIREMENTS = ["transformers>=5.24,<6", "torchvision", "segment-anything", "pillow", "numpy"]
RANDOM_PRESETS = ("tiny", "medium")
RANDOM_PRESET_NOTE = """**This is the `{name}` preset: small components that start from random weights, for tests,
benchmarks and demonstrations. It knows at most the built-in synthetic data; do not use it on real imagery.**"""


class ExportError(Exception):
    """A problem with the inputs of the export; the message says what to change."""


@dataclass
class Source:
    """What --run points at: a merged model folder or a PEFT checkpoint, and the metrics that describe it."""

    kind: str  # "merged" or "adapter"
    path: Path
    metrics: Path | None = None
    run_model: Path | None = None  # the run's merged model/ folder beside a checkpoint (its processor)


def _best_checkpoint(run: Path) -> Path:
    """The checkpoint train.py's model/ was taken from (load_best_model_at_end), else the last one."""
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    checkpoints = [c for c in checkpoints if (c / "adapter_config.json").is_file()]
    if not checkpoints:
        raise ExportError(f"--run {run}: no PEFT checkpoint in {run / 'checkpoints'} to export an adapter from")
    state = checkpoints[-1] / "trainer_state.json"
    best = json.loads(state.read_text()).get("best_model_checkpoint") if state.is_file() else None
    # The recorded path is where the run was at training time; only the folder name is trusted.
    if best and (run / "checkpoints" / Path(best).name / "adapter_config.json").is_file():
        return run / "checkpoints" / Path(best).name
    return checkpoints[-1]


def resolve_source(run: Path, adapter_only: bool) -> Source:
    if not run.is_dir():
        raise ExportError(f"--run {run}: no such folder")
    metrics = run / "metrics.json"
    if adapter_only and not (run / "adapter_config.json").is_file():
        if not (run / "checkpoints").is_dir():
            raise ExportError(f"--run {run}: --adapter_only needs a PEFT checkpoint-N folder or a train.py run "
                              "folder with checkpoints/")
        checkpoint = _best_checkpoint(run)
        print(f"adapter: {checkpoint}")
        return Source("adapter", checkpoint, run_model=run / "model")
    if (run / "model").is_dir():
        return Source("merged", run / "model", metrics if metrics.is_file() else None)
    if (run / "adapter_config.json").is_file():
        in_run = run.parent.name == "checkpoints"
        return Source("adapter", run, run_model=run.parent.parent / "model" if in_run else None)
    if (run / "config.json").is_file():
        beside = run.parent / "metrics.json"  # RUN/model given directly: RUN/metrics.json describes it
        found = metrics if metrics.is_file() else beside if run.name == "model" and beside.is_file() else None
        return Source("merged", run, found)
    raise ExportError(f"--run {run}: neither a train.py run folder (with model/), a model folder (with config.json) "
                      "nor a PEFT checkpoint (with adapter_config.json); for a run stopped before its model/ was "
                      "written, pass one of its checkpoints/checkpoint-N")


def _recorded_base(source: Source) -> Path | None:
    recorded = json.loads((source.path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    return Path(recorded) if recorded else None


def base_model_path(source: Source, override: Path | None) -> Path:
    """The local model a PEFT checkpoint was trained from: --base_model, or the path its adapter_config.json names."""
    path = override or _recorded_base(source)
    if path is None:
        raise ExportError(
            f"{source.path}/adapter_config.json names no base model (the run started from a freshly built "
            "preset): export the run's merged model/ folder instead, or pass --base_model FOLDER")
    if not path.is_dir():
        raise ExportError(f"base model {path}: no such folder (pass the model the checkpoint was trained from "
                          "as --base_model FOLDER)")
    return path


def _processor_folder(source: Source, base: Path | None) -> Path:
    """The processor of the base model, else of the run's merged model (the same processor: training keeps it)."""
    for folder in (base, _recorded_base(source), source.run_model):
        if folder is not None and (folder / "processor_config.json").is_file():
            return folder
    raise ExportError(f"{source.path}: no processor found beside it; pass --base_model FOLDER (the model the "
                      "checkpoint was trained from)")


def load_model(source: Source, base_override: Path | None):
    """The merged model and the processor, with this repository's classes (the export carries their code)."""
    from modeling_reasoncd import ReasonCDForChangeDetection
    from processing_reasoncd import ReasonCDProcessor
    from reasoncd.loading import CheckpointError, check_checkpoint

    def load(folder: Path):
        try:
            check_checkpoint(folder)
        except (FileNotFoundError, CheckpointError) as error:
            raise ExportError(str(error).replace("--model ", "")) from None
        model, info = ReasonCDForChangeDetection.from_pretrained(folder, dtype="auto", output_loading_info=True)
        if info["missing_keys"] or info["unexpected_keys"]:
            raise ExportError(f"{folder}: the weights do not fit this repository's model code (missing "
                              f"{sorted(info['missing_keys'])[:5]}, unexpected {sorted(info['unexpected_keys'])[:5]})")
        return model

    if source.kind == "merged":
        model, processor_folder = load(source.path), source.path
    else:
        from peft import PeftModel

        base = base_model_path(source, base_override)
        model = PeftModel.from_pretrained(load(base), source.path).merge_and_unload()
        processor_folder = _processor_folder(source, base)
    processor = ReasonCDProcessor.from_pretrained(processor_folder, trust_remote_code=True)
    return model.eval(), processor


# --- model card -------------------------------------------------------------------------------------------------
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
    return "\n".join(text)


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
    fusion = f"ResNet-{config.feature_fusion_config.resnet_depth} + FPN" if config.use_feature_fusion else "off"
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
explanation ending with `[SEG]`, or a sentence without `[SEG]` when the change of interest is absent.

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


# --- writing ----------------------------------------------------------------------------------------------------
def write_full_export(model, processor, staging: Path, *, max_shard_size: str, max_new_tokens: int) -> None:
    """Weights, remote code, processor, generation config, pipeline registration, endpoint handler."""
    from transformers import AutoModel, GenerationConfig
    from transformers.pipelines import PIPELINE_REGISTRY

    from pipeline_reasoncd import ReasonCDChangeDetectionPipeline

    model.config.register_for_auto_class()
    model.register_for_auto_class("AutoModel")
    processor.register_for_auto_class("AutoProcessor")
    PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=ReasonCDChangeDetectionPipeline,
                                        pt_model=AutoModel, type="multimodal")
    # Saving through the pipeline writes `custom_pipelines` into config.json and copies pipeline_reasoncd.py;
    # the tokenizer alone is handed over so that no separate preprocessor_config.json is written.
    pipe = ReasonCDChangeDetectionPipeline(model=model, processor=processor, tokenizer=processor.tokenizer,
                                           device=model.device)
    pipe.save_pretrained(staging, max_shard_size=max_shard_size)
    processor.save_pretrained(staging)
    GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                     bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id,
                     pad_token_id=model.config.pad_token_id).save_pretrained(staging)
    shutil.copy2(HANDLER_FILE, staging / "handler.py")
    (staging / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")


def write_adapter_export(source: Source, processor, staging: Path, base_model_id: str) -> None:
    """The checkpoint's adapter as trained (LoRA, modules_to_save, token rows), pointed at the base's Hub id."""
    config = json.loads((source.path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_model_id
    config["revision"] = None
    shutil.copy2(source.path / "adapter_model.safetensors", staging / "adapter_model.safetensors")
    (staging / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    processor.register_for_auto_class("AutoProcessor")
    processor.save_pretrained(staging)


def read_metrics(path: Path | None) -> dict | None:
    if path is None:
        return None
    if not path.is_file():
        raise ExportError(f"--metrics {path}: no such file")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"--metrics {path}: not JSON ({error})") from None
    if not isinstance(metrics, dict) or not any(key in metrics for key in METRIC_TITLES):
        raise ExportError(f"--metrics {path}: none of {', '.join(METRIC_TITLES)} found (expected train.py's "
                          "metrics.json)")
    return metrics


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Creates the repository (if needed) and uploads the folder; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                      commit_message="Upload ReasonCD export", ignore_patterns=[MARKER])
    return str(url)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path,
                        help="train.py run folder, merged model folder, or PEFT checkpoint-N folder")
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder holding other files; only the export's files are replaced")
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="also upload the export to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--metrics", type=Path, help="metrics.json for the card (default: the run's, if any)")
    parser.add_argument("--dataset", action="append", default=[],
                        help="data the model was trained and evaluated on (Hub id or name; repeatable)")
    parser.add_argument("--adapter_only", action="store_true", help="export the PEFT adapter instead of full weights")
    parser.add_argument("--base_model_id", help="Hub id of the base model (required with --adapter_only)")
    parser.add_argument("--base_model", type=Path, help="local folder of the model a PEFT checkpoint was trained "
                        "from (default: adapter_config.json's base_model_name_or_path)")
    parser.add_argument("--base_models", nargs="+", help="Hub ids of the pretrained components for the card "
                        "(default: as recorded in the config, or the paper's when the sizes match)")
    parser.add_argument("--max_shard_size", default="5GB", help="weights above this size are sharded")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="generation_config.json default")
    args = parser.parse_args(argv)
    if args.adapter_only and not args.base_model_id:
        parser.error("--adapter_only needs --base_model_id ORG/NAME: the Hub id the adapter is applied to")
    for flag, repo_id in (("--push_to_hub", args.push_to_hub), ("--base_model_id", args.base_model_id)):
        if repo_id is not None and not HUB_ID.fullmatch(repo_id):
            parser.error(f"{flag} {repo_id!r}: expected a Hub id ORG/NAME")

    try:
        source = resolve_source(args.run, args.adapter_only)
        # Checked before the model loads: the run, its model and any base model are inputs that are never touched.
        inputs = [args.run, source.path, args.base_model, args.metrics or source.metrics]
        output = OutputDir(args.output_dir, "export.py", inputs=inputs, overwrite=args.overwrite)
        metrics = read_metrics(args.metrics or source.metrics)
        # The card's usage snippets name the Hub repository; without --push_to_hub a placeholder the owner edits.
        repo_id = args.push_to_hub or f"your-org/{args.output_dir.resolve().name}"

        if args.adapter_only:
            from configuration_reasoncd import ReasonCDConfig
            from processing_reasoncd import ReasonCDProcessor

            processor_folder = _processor_folder(source, args.base_model)
            processor = ReasonCDProcessor.from_pretrained(processor_folder, trust_remote_code=True)
            config = ReasonCDConfig.from_pretrained(processor_folder)
            card = build_card(config=config, processor=processor, repo_id=repo_id, metrics=metrics,
                              datasets=args.dataset, base_ids=args.base_models or base_models(config),
                              parameters=None, adapter_base=args.base_model_id)
            with output.staged() as staging:
                write_adapter_export(source, processor, staging, args.base_model_id)
                card.save(staging / "README.md")
        else:
            model, processor = load_model(source, args.base_model)
            card = build_card(config=model.config, processor=processor, repo_id=repo_id, metrics=metrics,
                              datasets=args.dataset, base_ids=args.base_models or base_models(model.config),
                              parameters=model.num_parameters())
            with output.staged() as staging:
                write_full_export(model, processor, staging, max_shard_size=args.max_shard_size,
                                  max_new_tokens=args.max_new_tokens)
                card.save(staging / "README.md")
    except (ExportError, OutputDirError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    written = read_marker(args.output_dir)["export.py"]
    print(f"exported {source.path} to {args.output_dir}: {', '.join(written)}")

    if args.push_to_hub:
        try:
            url = push(args.output_dir, args.push_to_hub, args.private)
        # Offline, no token, no permission, network down (the HTTP client's errors vary between huggingface_hub
        # versions): whatever it is, the export itself is complete and stays where it is.
        except Exception as error:
            print(f"error: could not push to the Hub repository {args.push_to_hub} ({type(error).__name__}: "
                  f"{error}). The export in {args.output_dir} is complete; push it later with "
                  f"`hf upload {args.push_to_hub} {args.output_dir} --exclude {MARKER}` or rerun with network "
                  "access and a token (`hf auth login`).", file=sys.stderr)
            return 2
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
