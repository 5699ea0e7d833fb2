"""Train ReasonCD with the Hugging Face Trainer, PEFT LoRA and (optionally) DeepSpeed.

    python train.py                                   # the quickstart: synthetic data, tiny model, 8-14 min, 2 CPU cores
    python train.py --data DATA --model CKPT --output_dir runs/mine [--bf16] [--deepspeed configs/ds_zero2.json]
    accelerate launch --config_file configs/accelerate_zero2.yaml train.py --data DATA --model CKPT ...

Outputs in --output_dir: `model/` (merged weights that AutoModel/AutoProcessor load with trust_remote_code=True),
`checkpoints/` (resumable), `metrics.json` (test split, free generation, with a fixed sample of the training split
beside it under "train_split"; with --calibrate_presence, the presence threshold placed on the validation split
under "presence_calibration", and `presence_calibration.png`), `report.md` (both splits side by side), `samples.png`,
`curves.png`.
--output_dir must be new or empty; a folder of an earlier run is continued with --resume_from_checkpoint or started
over with --overwrite, which replaces only train.py's outputs (see reasoncd/io.py). Arguments, the
starting checkpoint and the output folder are all checked before any data is generated or loaded.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from transformers.integrations import is_deepspeed_zero3_enabled

from reasoncd.build import TRAINING_OPTIONS, option_overrides, save_checkpoint
from reasoncd.data.samples import SampleError, load_split
from reasoncd.evaluation.calibration import (CalibrationError, calibrate_presence, check_calibration_samples,
                                             check_presence_decision)
from reasoncd.evaluation.evaluate import final_test
from reasoncd.evaluation.figures import training_curves
from reasoncd.exits import run_command
from reasoncd.training.arguments import argument_problem, build_parser
from reasoncd.training.checkpoints import resume_point
from reasoncd.training.lora import apply_lora, trainable_parameter_groups
from reasoncd.training.recipes import DATA_OPTIONS, apply_recipe, prepare_quickstart_data
from reasoncd.training.start import check_land_cover_labels, check_start, load_start_model
from reasoncd.training.trainer import SaveOnInterrupt, load_unsharded, make_trainer, whole_parameters
from reasoncd.write_faults import WriteFault

REPO = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser(__doc__)
    args = parser.parse_args(argv)
    apply_recipe(args, REPO)  # the quickstart's or the paper's values for what is unset
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command("train.py", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    try:
        output = check_start(args)
    except (ValueError, FileNotFoundError) as error:  # OutputDirError and CheckpointError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    with output:  # the folder's lock, held until the run ends (reasoncd/folder_lock.py)
        return train(args, output)


def train(args: argparse.Namespace, output) -> int:
    try:
        data_seed = args.seed if args.synthetic_seed is None else args.synthetic_seed
        data = (prepare_quickstart_data(REPO, args.synthetic_pairs, data_seed,
                                        **{name: getattr(args, name) for name in DATA_OPTIONS})
                if args.quickstart else args.data)
        train_samples = load_split(data, "train")
        check_land_cover_labels(args, train_samples, Path(data) / "train")
        val_samples = load_split(data, "val", limit=args.max_val_samples)
        test_samples = [] if args.skip_test else load_split(data, "test")
        if args.calibrate_presence:
            check_calibration_samples(val_samples, f"--calibrate_presence, {Path(data) / 'val'}")
    except (SampleError, CalibrationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model, processor = load_start_model(args)  # seeded by --seed, as is everything random below
    if args.calibrate_presence:
        try:
            check_presence_decision(model)
        except CalibrationError as error:
            print(f"error: --calibrate_presence: {error}", file=sys.stderr)
            return 2
    if model.config.presence_threshold and not args.calibrate_presence:
        print(f"note: the starting model's presence_threshold ({model.config.presence_threshold:g}) is kept, though "
              "training moves the logits it was placed for; --calibrate_presence places it again", file=sys.stderr)
    if args.bce_pos_weight is not None:
        model.config.bce_pos_weight = args.bce_pos_weight
    for name, value in option_overrides(args, TRAINING_OPTIONS).items():  # training-only: any model may change them
        setattr(model.config, name, value)
    peft_model = apply_lora(model, rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout,
                            targets=tuple(args.lora_targets.split(",")), full_embeddings=args.full_embeddings,
                            train_vision_tower=args.train_vision_tower)
    print("trainable parameters per component:", trainable_parameter_groups(peft_model))
    if int(os.environ.get("RANK", "0")) == 0:  # one process of a distributed launch prepares the folder
        output.claim(start_over=args.resume_from_checkpoint is None)  # a restart replaces the earlier run's outputs

    interrupt = SaveOnInterrupt()
    trainer = make_trainer(args, model, peft_model, processor, train_samples, val_samples, interrupt)
    resume = resume_point(args.resume_from_checkpoint, args.output_dir / "checkpoints")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if interrupt.requested:
        print(f"stopped at step {trainer.state.global_step}; resume with --resume_from_checkpoint")
        return 130
    try:
        return finish(args, trainer, processor, train_samples, val_samples, test_samples)
    except WriteFault as error:  # the model or the figures: the run itself is safe in its checkpoints
        raise error.adding(f"The checkpoints in {args.output_dir / 'checkpoints'} are intact: once there is space, "
                           "run again with --resume_from_checkpoint to write the model and the metrics") from error


def finish(args: argparse.Namespace, trainer, processor, train_samples, val_samples, test_samples) -> int:
    """After training: the curves, the merged model (with --calibrate_presence, its presence threshold placed on the
    validation split), and the final test's metrics, report and samples."""
    calibration = None
    with whole_parameters(trainer.model):  # ZeRO-3: every process takes part in gathering the shards
        if trainer.is_world_process_zero():  # one process writes the model, the figures and the metrics
            training_curves(args.output_dir / "curves.png", trainer.state.log_history)
            merged = trainer.model.merge_and_unload()
            if args.calibrate_presence:
                calibration = calibrate_presence(merged, processor, val_samples, where="the validation split",
                                                 batch_size=args.eval_batch_size,
                                                 figure=args.output_dir / "presence_calibration.png")
                merged.config.presence_threshold = calibration["threshold"]
                print("presence decision calibrated:", json.dumps(calibration))
            # model/ is train.py's own entry (claimed above): replaced whatever an earlier run left in it.
            save_checkpoint(merged, processor, args.output_dir / "model", command="train.py", overwrite=True)
    if not trainer.is_world_process_zero():
        return 0
    print(f"model saved to {args.output_dir / 'model'}")
    if test_samples:
        if is_deepspeed_zero3_enabled():  # the merged model's parameters are shards again: test the saved one
            merged = load_unsharded(args.output_dir / "model")
        metrics = final_test(merged, processor, test_samples, args.output_dir, batch_size=args.eval_batch_size,
                             max_samples=args.max_eval_samples, train_samples=train_samples,
                             train_eval_samples=args.train_eval_samples,
                             extra={} if calibration is None else {"presence_calibration": calibration})
        print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
