"""Turn change-detection data sets into ReasonCD samples: one JSON file per image pair (docs/ARCHITECTURE.md, "Samples").

Each sample holds `img1_path`, `img2_path`, `mask_path` (relative to the JSON file), `question` and `answer`, plus
metadata (`kind`, `pair_id`, `heldout`, and for BCDD `croi` and `direction`). Samples go to OUT/{train,val,test}/.

    python prepare_data.py bcdd --t1 2012.tif --t2 2016.tif --label change.tif --output_dir data/bcdd
    python prepare_data.py folder --root LEVIR-CD --question Building --output_dir data/levir
    python prepare_data.py second --root SECOND --output_dir data/second

Every subcommand checks its input and its output folder first (unmatched file names, size mismatches, non-binary
labels; an output folder it may not write, see reasoncd/io.py), writes into a temporary folder beside
the output folder and puts the result in place at the end, so a failure leaves no partial output: the problems are
printed and the exit code is 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reasoncd.data.folders import PLAIN_ANSWER, PrepareError, prepare_bcdd, prepare_folder
from reasoncd.data.second import convert_second


# ------------------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Turn change-detection data into ReasonCD samples (one JSON per image pair, 8:1:1 split).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    bcdd = commands.add_parser("bcdd", help="cut the BCDD (WHU building CD) mosaics into tiles")
    bcdd.add_argument("--t1", required=True, type=Path, help="earlier mosaic (TIFF/GeoTIFF, PNG, ...)")
    bcdd.add_argument("--t2", required=True, type=Path, help="later mosaic, same size")
    bcdd.add_argument("--label", required=True, type=Path, help="change label mosaic (0/1, 0/255 or binary colour)")
    bcdd.add_argument("--output_dir", required=True, type=Path)
    bcdd.add_argument("--tile", type=int, default=256, help="tile side in pixels (default 256)")
    bcdd.add_argument("--seed", type=int, default=0, help="seed of the 8:1:1 split (default 0)")
    bcdd.add_argument("--question", default="Building", help='question of every sample (default "Building")')

    folder = commands.add_parser("folder", help="index a data set in an A/B/label-style folder layout")
    folder.add_argument("--root", required=True, type=Path, help="data set folder, optionally with train/val/test")
    folder.add_argument("--question", required=True, help='question of every sample, e.g. "Building"')
    folder.add_argument("--output_dir", required=True, type=Path)
    folder.add_argument("--answer", default=PLAIN_ANSWER, help=f'answer where the label has change ("{PLAIN_ANSWER}")')
    folder.add_argument("--seed", type=int, default=0, help="seed of the 8:1:1 split without split folders")

    for command in (bcdd, folder):
        command.add_argument(
            "--threshold", type=int, help="binarise non-binary labels with `> THRESHOLD` instead of failing"
        )

    second = commands.add_parser("second", help="make CRoI samples from SECOND's semantic change labels")
    second.add_argument("--root", required=True, type=Path, help="SECOND folder")
    second.add_argument("--output_dir", required=True, type=Path)
    second.add_argument("--seed", type=int, default=0, help="seed of the 8:1:1 split (default 0)")
    for command in (bcdd, folder, second):
        command.add_argument("--overwrite", action="store_true",
                             help="write into a folder holding other files; only this subcommand's outputs "
                             "(train/ val/ test/ and its images or masks) are replaced, other files are kept")
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.command == "bcdd":
        return prepare_bcdd(
            args.t1, args.t2, args.label, args.output_dir, args.tile, args.seed, args.question, args.threshold,
            args.overwrite,
        )
    if args.command == "folder":
        return prepare_folder(
            args.root, args.question, args.output_dir, args.answer, args.seed, args.threshold, args.overwrite
        )
    return convert_second(args.root, args.output_dir, seed=args.seed, overwrite=args.overwrite)


def print_summary(summary: dict, output_dir: Path) -> None:
    print(f"wrote {output_dir}")
    for key, value in summary.items():
        if key == "pairs" and isinstance(value, dict):
            print(f"  pairs: {sum(value.values())} ({', '.join(f'{split} {count}' for split, count in value.items())})")
        elif key == "change_fraction":
            print(f"  change pixels: {value:.2%}")
        else:
            print(f"  {key}: {value}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (PrepareError, ValueError, OSError) as error:  # ImageReadError is a ValueError
        print(f"prepare_data.py {args.command}: error: {error}", file=sys.stderr)
        return 2
    print_summary(summary, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
