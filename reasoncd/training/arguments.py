"""train.py's command line: its flags, what is wrong with their values on their own (no files read), and the
`TrainingArguments` they make."""

import argparse
import math
import os
from pathlib import Path

import torch
from transformers import TrainingArguments

from reasoncd.build import add_option_arguments
from reasoncd.data.augment import AUGMENTATIONS


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder with train/ val/ test/ JSON samples (default: the "
                        "quickstart's synthetic set, generated on first use)")
    parser.add_argument("--model", type=Path, help="checkpoint to start from (build_reasoncd.py or a released one)")
    parser.add_argument("--preset", default="tiny", help="with no --model: build this preset (only 'tiny' has "
                        "random weights; build reasoncd-7b with build_reasoncd.py --llm/--vision/--sam)")
    parser.add_argument("--output_dir", type=Path)
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a folder of an earlier run (or one holding other files): train.py's "
                        "outputs there are replaced, other files are kept")
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--num_train_epochs", type=float)
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--warmup_steps", type=int)
    parser.add_argument("--weight_decay", type=float,
                        help="AdamW's decoupled weight decay (not on biases and norms; default 0, as the paper)")
    parser.add_argument("--per_device_train_batch_size", type=int,
                        help="image pairs per device and step (all questions about a pair share its encoding)")
    parser.add_argument("--batch_size", type=int, help="effective batch in image pairs (gradient accumulation)")
    parser.add_argument("--lora_rank", type=int)
    parser.add_argument("--lora_alpha", type=int, help="default: 2 x rank")
    parser.add_argument("--lora_dropout", type=float, default=0.05)
    parser.add_argument("--lora_targets", help="comma-separated projection names inside the language model")
    parser.add_argument("--full_embeddings", action=argparse.BooleanOptionalAction, default=None,
                        help="train all of embed_tokens/lm_head (LISA) instead of only the new token rows")
    parser.add_argument("--eval_steps", type=int)
    parser.add_argument("--early_stopping_patience", type=int,
                        help="validations without a better fidelity score before training stops; 0: never stop "
                        "early (default 5; quickstart 0)")
    parser.add_argument("--bce_pos_weight", type=float,
                        help="weight of the change class in the mask BCE (default: the model config's, 3.0)")
    parser.add_argument("--train_vision_tower", action=argparse.BooleanOptionalAction, default=None,
                        help="train CLIP in full instead of freezing it (for a randomly initialised CLIP)")
    add_option_arguments(parser)  # architecture options: for a freshly built --preset model only
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (default fp32, as the paper)")
    parser.add_argument("--deepspeed", help="DeepSpeed config (configs/ds_zero2.json or configs/ds_zero3.json)")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--resume_from_checkpoint", nargs="?", const="auto",
                        help="a checkpoint folder, or no value: the last one in OUTPUT_DIR/checkpoints")
    parser.add_argument("--feature_cache", choices=["memory", "disk", "off"], default="memory",
                        help="cache the frozen CLIP/SAM outputs per image (disk: OUTPUT_DIR/feature_cache)")
    parser.add_argument("--eval_batch_size", type=int, default=8)
    parser.add_argument("--max_eval_samples", type=int, help="cap the test-split evaluation")
    parser.add_argument("--train_eval_samples", type=int, default=160,
                        help="also score the first pairs of the training split (about this many questions, whole "
                        "pairs) beside the test split, so that under- and over-fitting show; 0: not")
    parser.add_argument("--max_val_samples", type=int, default=256)
    parser.add_argument("--skip_test", action="store_true", help="no test-split evaluation after training")
    parser.add_argument("--calibrate_presence", action="store_true",
                        help="after training, set the presence decision's threshold (presence_threshold) to the one "
                        "of best balanced accuracy on the validation split's questions (needs a presence head and "
                        "both present and absent questions there; reasoncd/evaluation/calibration.py)")
    parser.add_argument("--synthetic_pairs", type=int, help="quickstart: number of synthetic pairs")
    parser.add_argument("--synthetic_seed", type=int, help="quickstart: seed of the synthetic data (default: --seed); "
                        "fixed, runs of other --seed values train other initialisations on the same data")
    parser.add_argument("--opposite_negatives_per_pair", type=int,
                        help="quickstart: absent questions per training pair about the direction a changed class did "
                        "not change in (prepare_data.py second's option; default 0)")
    parser.add_argument("--swapped_training_pairs", action=argparse.BooleanOptionalAction, default=None,
                        help="quickstart: also train on every training pair with T1 and T2 swapped, as a pair of its "
                        "own with its own questions (prepare_data.py second's option; default: the quickstart's)")
    parser.add_argument("--augment", choices=sorted(AUGMENTATIONS),
                        help="turn or mirror each training pair by a transform drawn per pair and batch: flip "
                        "(mirrored half of the time) or dihedral (any of the 4 quarter turns, mirrored or not); "
                        "default: the quickstart's setting, none with --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--train_sampling_strategy", choices=["random", "sequential"], default="random",
                        help="order of the training pairs: shuffled every epoch (seeded), or as listed (sorted by "
                        "file name); each process of a distributed run takes every WORLD_SIZE-th batch")
    return parser


def argument_problem(args) -> str | None:
    """What is wrong with the hyper-parameters on their own (no files read), or None."""
    at_least = {"per_device_train_batch_size": 1, "batch_size": 1, "lora_rank": 1, "lora_alpha": 1, "eval_steps": 1,
                "early_stopping_patience": 0, "eval_batch_size": 1, "max_eval_samples": 1, "max_val_samples": 1,
                "train_eval_samples": 0, "warmup_steps": 0, "dataloader_num_workers": 0, "synthetic_pairs": 3,
                "opposite_negatives_per_pair": 0}
    for name, low in at_least.items():
        value = getattr(args, name)
        if value is not None and value < low:
            return f"--{name} {value}: must be at least {low}"
    for name in ("learning_rate", "num_train_epochs", "bce_pos_weight"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            return f"--{name} {value}: must be a positive number"
    if args.weight_decay is not None and not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        return f"--weight_decay {args.weight_decay}: must be a number of at least 0"
    if args.max_steps == 0 or args.max_steps < -1:
        return f"--max_steps {args.max_steps}: give a positive number of steps, or -1 to train --num_train_epochs"
    if not 0 <= args.lora_dropout < 1:
        return f"--lora_dropout {args.lora_dropout}: must be in [0, 1)"
    if not all(name.strip() for name in args.lora_targets.split(",")):
        return f"--lora_targets {args.lora_targets!r}: give comma-separated module names, e.g. q_proj,v_proj"
    if args.deepspeed and not Path(args.deepspeed).is_file():
        return f"--deepspeed {args.deepspeed}: no such file (configs/ds_zero2.json or configs/ds_zero3.json)"
    return None


def training_arguments(args) -> TrainingArguments:
    """The Trainer's arguments: batches of image pairs (gradient accumulation makes --batch_size over every process),
    a validation and a checkpoint every --eval_steps, the best checkpoint by the fidelity score."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = max(1, math.ceil(args.batch_size / (args.per_device_train_batch_size * world)))
    return TrainingArguments(
        output_dir=str(args.output_dir / "checkpoints"),
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        lr_scheduler_type="linear",
        # One kernel over all parameters: the per-tensor loop took about half of a quickstart step on the CPU.
        optim="adamw_torch_fused",
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        # Not F1 alone: a model that ignores the question or marks absent CRoIs scores low (see evaluate).
        metric_for_best_model="fidelity_score",
        greater_is_better=True,
        logging_steps=max(1, min(10, args.eval_steps // 4)),
        bf16=args.bf16,
        deepspeed=args.deepspeed,
        activation_checkpointing=args.gradient_checkpointing,
        remove_unused_columns=False,
        label_names=["labels", "masks"],
        dataloader_num_workers=args.dataloader_num_workers,
        report_to=[],
        seed=args.seed,
        # Same seed, same bits on the CPU (README, "Reproducibility"): without it, the backward of indexing a
        # pair's image tokens by question adds with atomics across threads, in an order that varies run to run.
        full_determinism=not torch.cuda.is_available(),
        train_sampling_strategy=args.train_sampling_strategy,
        use_cpu=not torch.cuda.is_available(),
    )
