"""Turn change-detection data sets into ReasonCD samples: one JSON file per image pair (docs/ARCHITECTURE.md, "Samples").

Each sample holds `img1_path`, `img2_path`, `mask_path` (relative to the JSON file), `question` and `answer`, plus
metadata (`kind`, `pair_id`, `heldout`, and for BCDD `croi` and `direction`). Samples go to OUT/{train,val,test}/.

    python prepare_data.py bcdd --t1 2012.tif --t2 2016.tif --label change.tif --output_dir data/bcdd
    python prepare_data.py folder --root LEVIR-CD --question Building --output_dir data/levir
    python prepare_data.py second --root SECOND --output_dir data/second
    python prepare_data.py synthetic --output_dir data/pairs   # SECOND's layout; then: second --root data/pairs

Every subcommand that writes samples checks its input and its output folder first (unmatched file names, size mismatches, non-binary
labels; an output folder it may not write, see reasoncd/io.py), writes into a temporary folder beside
the output folder and puts the result in place at the end, so a failure leaves no partial output: the problems are
printed and the exit code is 2. `synthetic` adds pairs to its folder and skips those already there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reasoncd.data.folders import BCDD, FOLDER
from reasoncd.data.second import SECOND
from reasoncd.data.synthetic import SYNTHETIC
from reasoncd.exits import run_command
from reasoncd.write_faults import WriteFault

# One entry per data source (reasoncd/data/commands.py): its arguments and how it runs.
SUBCOMMANDS = (BCDD, FOLDER, SECOND, SYNTHETIC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Turn change-detection data into ReasonCD samples (one JSON per image pair, 8:1:1 split).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.add_arguments(commands.add_parser(subcommand.name, help=subcommand.help))
    return parser


def run(args: argparse.Namespace) -> dict:
    return next(command for command in SUBCOMMANDS if command.name == args.command).run(args)


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
    return run_command(f"prepare_data.py {args.command}", lambda: prepare(args))


def prepare(args: argparse.Namespace) -> int:
    try:
        summary = run(args)
    except WriteFault:
        raise  # said by run_command, with its own status
    except (ValueError, OSError) as error:  # PrepareError, ImageReadError and OutputDirError are ValueErrors
        print(f"prepare_data.py {args.command}: error: {error}", file=sys.stderr)
        return 2
    print_summary(summary, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
