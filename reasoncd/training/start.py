"""Where a training run starts: every check that can run before data is generated or loaded (the starting
checkpoint, the LoRA targets against the language model's layers, the checkpoint to resume from, the output
folder), then the starting model."""

import os
from pathlib import Path

import torch
from transformers.trainer_utils import get_last_checkpoint

from modeling_reasoncd import ReasonCDForChangeDetection
from processing_reasoncd import ReasonCDProcessor
from reasoncd.build import ARCHITECTURE_OPTIONS, build_tiny, option_flags, option_overrides
from reasoncd.data.samples import SampleError
from reasoncd.data.second import land_cover_label_paths
from reasoncd.io import OutputDir, OutputDirError, read_marker
from reasoncd.loading import check_checkpoint
from reasoncd.training.checkpoints import checkpoint_problem

# Everything train.py writes into --output_dir: what it may replace there when it starts over.
TRAIN_ENTRIES = ("checkpoints", "model", "metrics.json", "predictions.json", "samples.png", "curves.png",
                 "feature_cache", "report.md", "presence_calibration.png")


def language_model_linear_names(args) -> set[str]:
    """Names of the language model's linear layers (`q_proj`, ...), from the config alone: built on the meta
    device, so nothing is allocated or loaded."""
    from transformers import AutoModelForCausalLM

    from configuration_reasoncd import ReasonCDConfig

    config = ReasonCDConfig.from_pretrained(args.model) if args.model else ReasonCDConfig.from_preset(args.preset)
    with torch.device("meta"):
        language_model = AutoModelForCausalLM.from_config(config.text_config)
    return {name.rsplit(".", 1)[-1] for name, module in language_model.named_modules()
            if isinstance(module, torch.nn.Linear)}


def check_resume_checkpoint(value: str | None) -> None:
    """An explicit --resume_from_checkpoint must be a whole Trainer checkpoint (checkpoint-N with trainer_state.json
    and a manifest that matches its files: reasoncd/training/checkpoints.py)."""
    if value in (None, "auto"):
        return
    path = Path(value)
    if (path / "trainer_state.json").is_file():
        problem = checkpoint_problem(path)
        if problem:
            raise ValueError(f"--resume_from_checkpoint {value}: not a whole checkpoint ({problem}). Give another "
                             "checkpoint-N folder, or the flag without a value for the latest whole one")
        return
    found = [get_last_checkpoint(str(folder)) for folder in (path, path / "checkpoints") if folder.is_dir()]
    found = [checkpoint for checkpoint in found if checkpoint]
    hint = f"; the latest checkpoint there is {found[0]}" if found else ""
    what = "no such folder" if not path.exists() else "no checkpoint there (no trainer_state.json)"
    raise ValueError(f"--resume_from_checkpoint {value}: {what}{hint}. Give a checkpoint-N folder of "
                     "OUTPUT_DIR/checkpoints, or the flag without a value for the latest one in --output_dir")


def check_start(args) -> OutputDir:
    """Everything that can be checked before data is generated or loaded: the starting checkpoint, the LoRA targets
    against the language model's layers, the checkpoint to resume from, and the output folder. Returns the latter."""
    if args.model:
        changed = option_overrides(args, ARCHITECTURE_OPTIONS)
        if changed:
            flags = option_flags(changed)
            raise ValueError(f"{flags} changes the architecture: build the starting model with "
                             f"build_reasoncd.py {flags} and pass it as --model instead")
        check_checkpoint(args.model)
    elif args.preset != "tiny":
        raise ValueError(f"--preset {args.preset}: build it from real weights with build_reasoncd.py, then pass the "
                         "folder as --model")
    names = language_model_linear_names(args)
    unknown = [target for target in args.lora_targets.split(",") if target.strip() not in names]
    if unknown:
        raise ValueError(f"--lora_targets: the language model has no {', '.join(unknown)} layer; its linear layers "
                         f"are {', '.join(sorted(names))}")
    check_resume_checkpoint(args.resume_from_checkpoint)
    try:
        # One process of a distributed launch writes the folder, and holds its lock.
        output = OutputDir(args.output_dir, "train.py", inputs=[args.data, args.model], overwrite=args.overwrite,
                           entries=TRAIN_ENTRIES, lock=os.environ.get("RANK", "0") == "0")
    except OutputDirError as error:
        if args.resume_from_checkpoint and not args.overwrite:  # e.g. a run from before folders were marked
            raise OutputDirError(f"{error}; with --resume_from_checkpoint, --overwrite removes nothing") from None
        raise
    earlier = sorted(set(read_marker(output.path).get("train.py", ())) & set(TRAIN_ENTRIES)
                     & {p.name for p in output.path.iterdir()}) if output.path.is_dir() else []
    # Starting over deletes a run's checkpoints: only on request, never because --resume_from_checkpoint was forgotten.
    if earlier and not args.resume_from_checkpoint and not args.overwrite:
        raise OutputDirError(f"{args.output_dir} holds an earlier training run ({', '.join(earlier)}): continue it "
                             "with --resume_from_checkpoint, start over with --overwrite (replaces train.py's outputs "
                             "there, keeps other files), or choose another --output_dir")
    return output


def check_land_cover_labels(args, train_samples: list[dict], where: Path) -> None:
    """A land-cover head built for this run (`--land_cover_head`) learns only from per-date land-cover labels (a
    SECOND layout's label1/ and label2/ beside im1/ and im2/): refused, before anything is written, where no training
    pair in `where` has them, since the head, and whatever reads it, would stay untrained."""
    if args.model is None and args.land_cover_head and not any(map(land_cover_label_paths, train_samples)):
        raise SampleError(f"--land_cover_head: no training pair in {where} has per-date land-cover labels (a SECOND "
                          "layout's label1/ and label2/ beside im1/ and im2/), so the new head would learn nothing; "
                          "train it on semantic change data such as SECOND (prepare_data.py second), or leave it off")


def load_start_model(args):
    """The model and processor to train, once `check_start` has passed: --model's, or a tiny model built now."""
    if args.model:
        model = ReasonCDForChangeDetection.from_pretrained(args.model)
        processor = ReasonCDProcessor.from_pretrained(args.model, trust_remote_code=True)  # its own tokenizer files
        return model, processor
    return build_tiny(args.seed, **option_overrides(args, ARCHITECTURE_OPTIONS))
