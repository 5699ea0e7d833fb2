"""Evaluate ReasonCD on a test set, or score any method's saved change masks against labels (paper §IV-B).

    python eval.py --model runs/bcdd/model --data data/bcdd --output_dir runs/bcdd/eval            # test split
    python eval.py --model CKPT --data LEVIR-CD --question Building --output_dir OUT               # A/B/label folder
    python eval.py --model CKPT --data data/second --teacher_forced --output_dir OUT               # LISA-style
    python eval.py --model CKPT --data data/bcdd --quantize 4 --output_dir OUT     # LLM in 4 bits (bitsandbytes)
    python eval.py --model CKPT --data data/second --presence_threshold 2 --output_dir OUT   # stricter "present"
    python eval.py --pred_dir runs/fc-ef/pred --label_dir LEVIR-CD/label --output_dir OUT [--threshold 127]

--data is a folder of JSON samples (with train/ val/ test/, pick one with --split, or the JSON files directly in
it) or a change-detection folder in a standard layout (A/B/label, prev/curr/label, im1/im2/label, ...), which is
converted on the fly (reasoncd.data.folders.prepare_folder) with --question: its --split pairs where it has
train/ val/ test/ folders, otherwise all of its pairs.

Outputs in --output_dir, written all at once after every input has been checked: `metrics.json` (F1, precision,
recall, OA, IoU, kappa from the global confusion matrix with change = positive, gIoU, cIoU, the counts; in model
mode also per question kind, text figures, steering, question sensitivity, the counterfactual F1 drop, the
fidelity score and, for questions about several changes, their per-target figures under `multi_target`), `report.md`, `per_sample.json`, `panels/{best,median,worst}.png` (by IoU) and, in model mode,
`predictions/<sample>.png` (0/255, the input's size).
Bad input: a message on stderr, exit code 2 and no output. --output_dir must be new, empty or an earlier eval.py
output (see reasoncd/io.py; --overwrite writes beside other files, replacing only eval.py's own).
"""

import argparse
import os
import sys
from pathlib import Path

from reasoncd.data.images import ImageReadError
from reasoncd.data.samples import SPLITS
from reasoncd.evaluation.evaluate import EvalError, evaluate
from reasoncd.evaluation.report import summary_lines
from reasoncd.exits import run_command
from reasoncd.io import OutputDirError
from reasoncd.loading import CheckpointError, add_presence_threshold_argument, add_quantize_argument


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model mode")
    model.add_argument("--model", type=Path, help="checkpoint folder (build_reasoncd.py or train.py's model/)")
    model.add_argument("--data", type=Path, help="JSON samples (split folders or flat) or a change-detection folder")
    model.add_argument("--split", default="test", choices=SPLITS,
                       help="split to evaluate where the data has split folders (default test)")
    model.add_argument("--question", default="Building",
                       help="question asked about every pair of a change-detection folder (default 'Building')")
    model.add_argument("--teacher_forced", action="store_true",
                       help="feed the reference answer and read the mask at its [SEG] (LISA's validation mode) "
                            "instead of free generation")
    model.add_argument("--batch_size", type=int, default=8, help="questions per forward pass (default 8)")
    model.add_argument("--max_samples", type=int, help="evaluate only the first N samples")
    model.add_argument("--max_new_tokens", type=int, default=48, help="answer length limit (default 48)")
    model.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    add_quantize_argument(model)
    add_presence_threshold_argument(model)
    predictions = parser.add_argument_group("prediction mode")
    predictions.add_argument("--pred_dir", type=Path, help="predicted masks of any method, named like the labels")
    predictions.add_argument("--label_dir", type=Path, help="ground-truth change labels (0/1 or 0/255)")
    predictions.add_argument("--t1_dir", type=Path, help="earlier images, for the panels (with --t2_dir)")
    predictions.add_argument("--t2_dir", type=Path, help="later images, for the panels (with --t1_dir)")
    parser.add_argument("--threshold", type=int,
                        help="binarise non-binary 8-bit masks with > T: prediction masks (prediction mode) or the "
                             "labels of a change-detection folder (model mode)")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder holding other files; only eval.py's outputs are replaced")
    args = parser.parse_args(argv)
    if args.quantize is not None and args.pred_dir:
        parser.error("--quantize applies to model mode (--model/--data), not to --pred_dir")
    if args.presence_threshold is not None and args.pred_dir:
        parser.error("--presence_threshold applies to model mode (--model/--data), not to --pred_dir")

    if args.pred_dir or args.label_dir:
        if args.model or args.data:
            parser.error("give either --model/--data (model mode) or --pred_dir/--label_dir (prediction mode)")
        if not (args.pred_dir and args.label_dir):
            parser.error("prediction mode needs both --pred_dir and --label_dir")
        if bool(args.t1_dir) != bool(args.t2_dir):
            parser.error("--t1_dir and --t2_dir go together")
    elif not (args.model and args.data):
        parser.error("model mode needs --model and --data (or use --pred_dir/--label_dir)")
    for name in ("batch_size", "max_samples", "max_new_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.threshold is not None and not 0 <= args.threshold < 255:
        parser.error("--threshold must be in 0..254 (8-bit masks, change is > T)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command("eval.py", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    try:
        summary = evaluate(**vars(args))
    except (EvalError, ImageReadError, FileNotFoundError, ImportError, CheckpointError, OutputDirError) as error:
        print(f"eval.py: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(summary, args.output_dir)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
