"""What export.py's --run points at (a train.py run, a merged model folder or a PEFT checkpoint), and loading it as
one merged model with its processor."""

import json
from dataclasses import dataclass
from pathlib import Path


class ExportError(Exception):
    """A problem with the inputs of the export; the message says what to change."""


@dataclass
class Source:
    """What --run points at: a merged model folder or a PEFT checkpoint, and the metrics that describe it."""

    kind: str  # "merged" or "adapter"
    path: Path
    metrics: Path | None = None
    run_model: Path | None = None  # the run's merged model/ folder beside a checkpoint (its processor)


def _checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def best_checkpoint(run: Path) -> Path:
    """The checkpoint train.py's model/ was taken from (load_best_model_at_end), else the last one."""
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*"), key=_checkpoint_step)
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
    """The model --run names: its merged model/ (full export) or its best PEFT checkpoint (--adapter_only), with
    the metrics.json beside it if there is one."""
    if not run.is_dir():
        raise ExportError(f"--run {run}: no such folder")
    metrics = run / "metrics.json"
    if adapter_only and not (run / "adapter_config.json").is_file():
        if not (run / "checkpoints").is_dir():
            raise ExportError(f"--run {run}: --adapter_only needs a PEFT checkpoint-N folder or a train.py run "
                              "folder with checkpoints/")
        checkpoint = best_checkpoint(run)
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


def processor_folder(source: Source, base: Path | None) -> Path:
    """The processor of the base model, else of the run's merged model (the same processor: training keeps it)."""
    for folder in (base, _recorded_base(source), source.run_model):
        if folder is not None and (folder / "processor_config.json").is_file():
            return folder
    raise ExportError(f"{source.path}: no processor found beside it; pass --base_model FOLDER (the model the "
                      "checkpoint was trained from)")


def load_source(source: Source, base_override: Path | None):
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
        model, folder = load(source.path), source.path
    else:
        from peft import PeftModel

        base = base_model_path(source, base_override)
        model = PeftModel.from_pretrained(load(base), source.path).merge_and_unload()
        folder = processor_folder(source, base)
    processor = ReasonCDProcessor.from_pretrained(folder, trust_remote_code=True)
    return model.eval(), processor
