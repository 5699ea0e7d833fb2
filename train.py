"""Train ReasonCD with the Hugging Face Trainer, PEFT LoRA and (optionally) DeepSpeed.

    python train.py                                   # the quickstart: synthetic data, tiny model, ~10 min on CPU
    python train.py --data DATA --model CKPT --output_dir runs/mine [--bf16] [--deepspeed configs/ds_zero2.json]
    accelerate launch --config_file configs/accelerate_zero2.yaml train.py --data DATA --model CKPT ...

Outputs in --output_dir: `model/` (merged weights that AutoModel/AutoProcessor load with trust_remote_code=True),
`checkpoints/` (resumable), `metrics.json` (test split, free generation, with a fixed sample of the training split
beside it under "train_split"), `report.md` (both splits side by side), `samples.png`, `curves.png`.
--output_dir must be new or empty; a folder of an earlier run is continued with --resume_from_checkpoint or started
over with --overwrite, which replaces only train.py's outputs (see reasoncd/io.py). Arguments, the
starting checkpoint and the output folder are all checked before any data is generated or loaded.
"""

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint

from reasoncd.build import (ARCHITECTURE_OPTIONS, LOSS_OPTIONS, add_option_arguments, build_tiny, option_overrides,
                            save_checkpoint)
from modeling_reasoncd import ReasonCDForChangeDetection
from processing_reasoncd import ReasonCDProcessor
from reasoncd.io import write_json_atomic, write_text_atomic
from reasoncd.evaluation.report import split_report
from reasoncd.loading import check_checkpoint
from reasoncd.evaluation.scoring import predict_samples, score
from reasoncd.training.feature_cache import FrozenFeatureCache
from reasoncd.evaluation.figures import prediction_panels, training_curves
from reasoncd.training.checkpoints import checkpoint_problem, last_complete_checkpoint
from reasoncd.training.lora import apply_lora, trainable_parameter_groups
from reasoncd.training.trainer import ReasonCDTrainer, SaveOnInterrupt, load_unsharded, whole_parameters
from reasoncd.io import OutputDir, OutputDirError, read_marker
from reasoncd.data.samples import SEG, SampleError, load_pair, load_split, training_sample
from reasoncd.training.dataset import ReasonCDCollator, as_dataset

REPO = Path(__file__).resolve().parent
QUICKSTART = {
    "pairs": 360,  # about 1,300 training questions
    "data": REPO / "data" / "synthetic",
    "output_dir": REPO / "runs" / "quickstart",
    "num_train_epochs": 8,
    "learning_rate": 1e-3,
    "warmup_steps": 30,
    "per_device_train_batch_size": 2,  # image pairs, about 7 questions
    "batch_size": 2,
    "lora_rank": 16,
    "lora_targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "eval_steps": 144,  # once per epoch (8 validations): the test and training-sample scoring need the time
    # The tiny language model starts from random weights: it has no vocabulary to reuse, so it learns its
    # embeddings and output layer in full and adapts the MLPs as well as attention.
    "full_embeddings": True,
    # Its CLIP is random too: frozen, it shows the language model too little to tell what changed.
    "train_vision_tower": True,
    # 8 epochs are the budget, and the fidelity score wanders while the model first learns to say "absent" and
    # only then to follow the question: stopping early kept an epoch-2.5 model. The best checkpoint is still kept.
    "early_stopping_patience": 0,
}
# Everything train.py writes into --output_dir: what it may replace there when it starts over.
TRAIN_ENTRIES = ("checkpoints", "model", "metrics.json", "predictions.json", "samples.png", "curves.png",
                 "feature_cache", "report.md")
PAPER = {"num_train_epochs": 100, "learning_rate": 5e-5, "warmup_steps": 100, "per_device_train_batch_size": 4,
         "batch_size": 16, "lora_rank": 8, "lora_targets": "q_proj,v_proj", "eval_steps": 200,
         "full_embeddings": False, "train_vision_tower": False, "early_stopping_patience": 5}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--no_fusion", action="store_true", help="the paper's ablation: fusion module off "
                        "(for a freshly built --preset model; with --model, build it with --no_fusion instead)")
    parser.add_argument("--eval_batch_size", type=int, default=8)
    parser.add_argument("--max_eval_samples", type=int, help="cap the test-split evaluation")
    parser.add_argument("--train_eval_samples", type=int, default=160,
                        help="also score the first pairs of the training split (about this many questions, whole "
                        "pairs) beside the test split, so that under- and over-fitting show; 0: not")
    parser.add_argument("--max_val_samples", type=int, default=256)
    parser.add_argument("--skip_test", action="store_true", help="no test-split evaluation after training")
    parser.add_argument("--synthetic_pairs", type=int, help="quickstart: number of synthetic pairs")
    parser.add_argument("--synthetic_seed", type=int, help="quickstart: seed of the synthetic data (default: --seed); "
                        "fixed, runs of other --seed values train other initialisations on the same data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--train_sampling_strategy", choices=["random", "sequential"], default="random",
                        help="order of the training pairs: shuffled every epoch (seeded), or as listed (sorted by "
                        "file name); each process of a distributed run takes every WORLD_SIZE-th batch")
    args = parser.parse_args(argv)

    args.quickstart = args.data is None
    defaults = {**PAPER, **(QUICKSTART if args.quickstart else {})}
    for key in ("num_train_epochs", "learning_rate", "warmup_steps", "per_device_train_batch_size", "batch_size",
                "lora_rank", "lora_targets", "eval_steps", "full_embeddings", "train_vision_tower",
                "early_stopping_patience"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.lora_alpha is None:
        args.lora_alpha = 2 * args.lora_rank
    if args.output_dir is None:
        args.output_dir = QUICKSTART["output_dir"] if args.quickstart else Path("runs") / "train"
    if args.synthetic_pairs is None:
        args.synthetic_pairs = QUICKSTART["pairs"]
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    return args


def argument_problem(args) -> str | None:
    """What is wrong with the hyper-parameters on their own (no files read), or None."""
    at_least = {"per_device_train_batch_size": 1, "batch_size": 1, "lora_rank": 1, "lora_alpha": 1, "eval_steps": 1,
                "early_stopping_patience": 0, "eval_batch_size": 1, "max_eval_samples": 1, "max_val_samples": 1,
                "train_eval_samples": 0, "warmup_steps": 0, "dataloader_num_workers": 0, "synthetic_pairs": 3}
    for name, low in at_least.items():
        value = getattr(args, name)
        if value is not None and value < low:
            return f"--{name} {value}: must be at least {low}"
    for name in ("learning_rate", "num_train_epochs", "bce_pos_weight"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            return f"--{name} {value}: must be a positive number"
    if args.max_steps == 0 or args.max_steps < -1:
        return f"--max_steps {args.max_steps}: give a positive number of steps, or -1 to train --num_train_epochs"
    if not 0 <= args.lora_dropout < 1:
        return f"--lora_dropout {args.lora_dropout}: must be in [0, 1)"
    if not all(name.strip() for name in args.lora_targets.split(",")):
        return f"--lora_targets {args.lora_targets!r}: give comma-separated module names, e.g. q_proj,v_proj"
    if args.deepspeed and not Path(args.deepspeed).is_file():
        return f"--deepspeed {args.deepspeed}: no such file (configs/ds_zero2.json or configs/ds_zero3.json)"
    return None


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
        if args.no_fusion:
            raise ValueError("--no_fusion changes the architecture: build the starting model with "
                             "build_reasoncd.py --no_fusion and pass it as --model instead")
        changed = option_overrides(args, ARCHITECTURE_OPTIONS)
        if changed:
            flags = " ".join(f"--{name}" for name in changed)
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
        output = OutputDir(args.output_dir, "train.py", inputs=[args.data, args.model], overwrite=args.overwrite,
                           entries=TRAIN_ENTRIES)
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


def prepare_quickstart_data(pairs: int, seed: int) -> Path:
    """The built-in synthetic set in SECOND layout, converted to JSON samples (both cached on disk)."""
    from reasoncd.data.second import convert_second
    from reasoncd.data.synthetic import generate_second_layout

    root = QUICKSTART["data"] / f"second-{pairs}-seed{seed}"
    generate_second_layout(root, pairs, seed=seed)
    samples = QUICKSTART["data"] / f"samples-{pairs}-seed{seed}"
    # The quickstart's own cache: written by this or an earlier version of train.py, so replacing it is allowed.
    summary = convert_second(root, samples, seed=seed, overwrite=True)
    print(f"synthetic data: {json.dumps(summary.get('samples', summary))}")
    return samples


def load_start_model(args):
    if args.model and args.no_fusion:
        raise SystemExit("--no_fusion changes the architecture: build the starting model with "
                         "build_reasoncd.py --no_fusion and pass it as --model instead")
    if args.model:
        check_checkpoint(args.model)
        model = ReasonCDForChangeDetection.from_pretrained(args.model)
        processor = ReasonCDProcessor.from_pretrained(args.model, trust_remote_code=True)  # its own tokenizer files
        return model, processor
    if args.preset != "tiny":
        raise SystemExit(f"--preset {args.preset}: build it from real weights with build_reasoncd.py, "
                         "then pass the folder as --model")
    overrides = {"use_feature_fusion": False} if args.no_fusion else {}
    overrides.update(option_overrides(args, ARCHITECTURE_OPTIONS))
    return build_tiny(args.seed, **overrides)


def final_test(model, processor, test_samples, train_samples, args) -> dict:
    """Free generation on the test split and on a fixed sample of the training split (`training_sample`); writes
    metrics.json (the test split's figures, the training sample's under "train_split"), report.md, predictions.json
    and samples.png."""
    samples = test_samples[: args.max_eval_samples] if args.max_eval_samples else test_samples
    predictions = predict_samples(model, processor, samples, batch_size=args.eval_batch_size)
    metrics = score(samples, predictions)
    summary = {k: v for k, v in metrics.items() if k != "per_sample"}
    splits = {"test": summary}
    seen = training_sample(train_samples, args.train_eval_samples)
    if seen:
        train_metrics = score(seen, predict_samples(model, processor, seen, batch_size=args.eval_batch_size))
        summary["train_split"] = splits["train"] = {k: v for k, v in train_metrics.items() if k != "per_sample"}
        summary["train_split"]["n_samples"] = len(seen)
    summary["n_samples"] = len(samples)
    write_json_atomic(args.output_dir / "metrics.json", summary)
    write_json_atomic(args.output_dir / "predictions.json", metrics["per_sample"])
    write_text_atomic(args.output_dir / "report.md", split_report(splits))
    samples_figure(model, processor, samples, predictions, args.output_dir / "samples.png")
    return summary


def samples_figure(model, processor, samples, predictions, path: Path) -> None:
    """
    One test pair asked about different changes and about one that is absent: the figure shows whether each
    question gets its own mask. The pair with the most distinct changes asked about, one that has an absent
    question preferred; up to three present changes and one absent one.
    """
    by_pair = defaultdict(list)
    for index, sample in enumerate(samples):
        by_pair[sample["pair_id"]].append(index)

    def chosen(indices):
        present, absent, seen = [], [], set()
        for index in indices:
            sample = samples[index]
            if SEG not in sample["answer"]:
                absent.append(index)
            elif (sample.get("croi"), sample.get("direction")) not in seen:
                seen.add((sample.get("croi"), sample.get("direction")))
                present.append(index)
        return present[:3] + absent[:1]

    def preference(indices):
        picked = chosen(indices)
        has_absent = any(SEG not in samples[i]["answer"] for i in picked)
        return (has_absent, len(picked))

    indices = chosen(max(by_pair.values(), key=preference))
    rows = []
    for index in indices:
        t1, t2, truth = load_pair(samples[index])
        rows.append({"t1": t1, "t2": t2, "truth": truth, "pred": predictions[index]["mask"],
                     "question": samples[index]["question"], "answer": predictions[index]["text"],
                     "note": samples[index].get("kind", "")})
    prediction_panels(path, rows, title=f"pair {samples[indices[0]]['pair_id']}: one pair, one mask per question")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        output = check_start(args)
    except (ValueError, FileNotFoundError) as error:  # OutputDirError and CheckpointError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        data_seed = args.seed if args.synthetic_seed is None else args.synthetic_seed
        data = prepare_quickstart_data(args.synthetic_pairs, data_seed) if args.quickstart else args.data
        train_samples = load_split(data, "train")
        val_samples = load_split(data, "val", limit=args.max_val_samples)
        test_samples = [] if args.skip_test else load_split(data, "test")
    except SampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model, processor = load_start_model(args)  # seeded by --seed, as is everything random below
    if args.bce_pos_weight is not None:
        model.config.bce_pos_weight = args.bce_pos_weight
    for name, value in option_overrides(args, LOSS_OPTIONS).items():  # loss weights: any model may change them
        setattr(model.config, name, value)
    peft_model = apply_lora(model, rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout,
                            targets=tuple(args.lora_targets.split(",")), full_embeddings=args.full_embeddings,
                            train_vision_tower=args.train_vision_tower)
    print("trainable parameters per component:", trainable_parameter_groups(peft_model))
    if int(os.environ.get("RANK", "0")) == 0:  # one process of a distributed launch prepares the folder
        output.claim(start_over=args.resume_from_checkpoint is None)  # a restart replaces the earlier run's outputs

    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = max(1, math.ceil(args.batch_size / (args.per_device_train_batch_size * world)))
    checkpoints = args.output_dir / "checkpoints"
    training_args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="linear",
        optim="adamw_torch",
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
    cache = None
    if args.feature_cache != "off":
        directory = args.output_dir / "feature_cache" if args.feature_cache == "disk" else None
        cache = FrozenFeatureCache(model, directory)
    interrupt = SaveOnInterrupt()
    trainer = ReasonCDTrainer(
        model=peft_model,
        args=training_args,
        train_dataset=as_dataset(train_samples),
        eval_dataset=as_dataset(val_samples),  # scored by ReasonCDTrainer.evaluate
        data_collator=ReasonCDCollator(processor, cache_keys=cache is not None),
        processing_class=processor.tokenizer,
        callbacks=[interrupt] + ([EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience)]
                                 if args.early_stopping_patience else []),
        feature_cache=cache,
        cache_vision=not args.train_vision_tower,
        val_samples=val_samples,
        reasoncd_processor=processor,
        eval_batch_size=args.eval_batch_size,
    )
    resume = args.resume_from_checkpoint
    if resume == "auto":
        resume, skipped = last_complete_checkpoint(checkpoints)
        for name, problem in skipped.items():
            print(f"not resuming from {checkpoints / name}: {problem}")
        print(f"resuming from {resume}" if resume else "no checkpoint to resume from: starting fresh")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if interrupt.requested:
        print(f"stopped at step {trainer.state.global_step}; resume with --resume_from_checkpoint")
        return 130
    with whole_parameters(trainer.model):  # ZeRO-3: every process takes part in gathering the shards
        if trainer.is_world_process_zero():  # one process writes the model, the figures and the metrics
            training_curves(args.output_dir / "curves.png", trainer.state.log_history)
            merged = trainer.model.merge_and_unload()
            # model/ is train.py's own entry (claimed above): replaced whatever an earlier run left in it.
            save_checkpoint(merged, processor, args.output_dir / "model", command="train.py", overwrite=True)
    if not trainer.is_world_process_zero():
        return 0
    print(f"model saved to {args.output_dir / 'model'}")
    if test_samples:
        if is_deepspeed_zero3_enabled():  # the merged model's parameters are shards again: test the saved one
            merged = load_unsharded(args.output_dir / "model")
        metrics = final_test(merged, processor, test_samples, train_samples, args)
        print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
