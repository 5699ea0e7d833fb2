"""The two export folders: the full model (weights, remote code, processor, generation defaults, the
`change-detection` pipeline, the Inference Endpoints handler) and the PEFT adapter alone."""

import json
import shutil
from pathlib import Path

from reasoncd.publishing.source import ExportError, Source

PIPELINE_TASK = "change-detection"
HANDLER_NAME = "handler.py"
# What an endpoint needs beyond its base image: the remote code imports segment_anything and torchvision.
REQUIREMENTS = ["transformers>=5.24,<6", "torchvision", "segment-anything", "pillow", "numpy"]


def handler_file() -> Path:
    """The Inference Endpoints handler that travels with a full export. It lives beside the other remote-code
    files (the repository root), so it is found where pipeline_reasoncd.py was imported from."""
    import pipeline_reasoncd

    path = Path(pipeline_reasoncd.__file__).resolve().parent / HANDLER_NAME
    if not path.is_file():
        raise ExportError(f"{path}: the Inference Endpoints handler is missing; a full export copies it from beside "
                          f"{Path(pipeline_reasoncd.__file__).name} (restore it from the repository)")
    return path


def write_full_export(model, processor, staging: Path, *, max_shard_size: str, max_new_tokens: int) -> None:
    """Weights, remote code, processor, generation config, pipeline registration, endpoint handler."""
    from transformers import AutoModel, GenerationConfig
    from transformers.pipelines import PIPELINE_REGISTRY

    from pipeline_reasoncd import ReasonCDChangeDetectionPipeline

    handler = handler_file()
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
    shutil.copy2(handler, staging / HANDLER_NAME)
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
