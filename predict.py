"""Answer a question about the change between two images and write the change map.

    python predict.py --model runs/quickstart/model --t1 A.png --t2 B.png --question "new buildings" --out mask.png
    python predict.py ... --json        # {"text", "raw_text", "mask", "changed_fraction", "mask_confidence",
                                        #  "seg_probability", "targets": [{"label", "mask", ...}, ...]}

An answer about several changes ("new buildings and new ponds") names each and gives each its own mask: --out is
their union, and each target's mask is written beside it as OUT_target1.png, OUT_target2.png, ...
    python predict.py ... --quantize 4  # the language model in 4 (or 8) bits: pip install -e .[quant]
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from reasoncd.data.images import ImageReadError, read_rgb
from reasoncd.exits import run_command
from reasoncd.io import check_file_destination, write_png_atomic
from reasoncd.loading import (add_presence_threshold_argument, add_quantize_argument, check_checkpoint, load_model,
                              predict, require_bitsandbytes)
from reasoncd.messages import size_mismatch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="checkpoint folder")
    parser.add_argument("--t1", required=True, type=Path, help="earlier image")
    parser.add_argument("--t2", required=True, type=Path, help="later image")
    parser.add_argument("--question", required=True, help="the change of interest, e.g. 'new buildings'")
    parser.add_argument("--out", required=True, type=Path, help="output mask PNG (0/255, the inputs' size)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the answer (text; raw_text keeps the model's "
                        "[SEG] tokens), the mask path, the changed fraction, the mask's confidence and the "
                        "probability of [SEG] as JSON, and the same per target (label: the words naming it)")
    add_quantize_argument(parser)
    add_presence_threshold_argument(parser)
    args = parser.parse_args(argv)
    return run_command("predict.py", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    try:
        if not args.question.strip():
            raise ValueError("--question is empty; describe the change of interest, e.g. 'new buildings'")
        image_t1, note_t1 = read_rgb(args.t1)
        image_t2, note_t2 = read_rgb(args.t2)
        for path, note in ((args.t1, note_t1), (args.t2, note_t2)):
            if note:
                print(f"note: {path}: {note}", file=sys.stderr)
        out = args.out.resolve()
        if out.is_dir():
            raise ValueError(f"--out {args.out} is a folder; give the path of the PNG file to write")
        inputs = (args.t1.resolve(), args.t2.resolve())
        if out in inputs:
            raise ValueError(f"--out {args.out} is one of the input images; give another path for the change map")
        check_file_destination(args.out, "--out")  # a read-only folder is found before the model runs
        check_checkpoint(args.model)  # before the slow imports
        require_bitsandbytes(args.quantize)
        mismatch = size_mismatch({f"--t1 {args.t1}": image_t1.shape[:2], f"--t2 {args.t2}": image_t2.shape[:2]})
        if mismatch:
            raise ValueError(f"{mismatch} (height x width); the two dates must be co-registered images of the same "
                             "size")
        model, processor = load_model(args.model, quantize=args.quantize, presence_threshold=args.presence_threshold)
        result = predict(model, processor, image_t1, image_t2, [args.question], args.max_new_tokens)[0]
        clash = [path for path in target_paths(args.out, len(result["targets"])) if path.resolve() in inputs]
        if clash:
            raise ValueError(f"the mask of a target would be written to {clash[0]}, one of the input images; give "
                             "--out another name")
    except (ImageReadError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    targets = result["targets"]
    paths = target_paths(args.out, len(targets))
    write_png_atomic(args.out, result["mask"])
    for path, target in zip(paths, targets):
        if path != args.out:
            write_png_atomic(path, target["mask"])
    if args.json:
        print(json.dumps({**_figures(result, args.out), "text": result["text"], "raw_text": result["raw_text"],
                          "targets": [{"label": target["label"], **_figures(target, path)}
                                      for path, target in zip(paths, targets)]}))
    else:
        print(result["text"])
        print(f"change map: {args.out} ({result['changed_fraction']:.2%} of pixels changed)")
        if len(targets) > 1:
            for path, target in zip(paths, targets):
                print(f"  {target['label']}: {path} ({target['changed_fraction']:.2%})")
    return 0


def target_paths(out: Path, count: int) -> list[Path]:
    """Where each target's mask goes: --out itself for one target, OUT_target1.png, ... beside it for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_target{k}{out.suffix}") for k in range(1, count + 1)]


def _figures(result: dict, path: Path) -> dict:
    return {"mask": str(path), "changed_fraction": result["changed_fraction"],
            "mask_confidence": result["mask_confidence"], "seg_probability": result["seg_probability"]}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
