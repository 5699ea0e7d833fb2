"""prepare_data.py's subcommands as a table: each data module contributes one `Subcommand` (its arguments and how
it runs), and prepare_data.py lists them. A new data source is a module with its `Subcommand`, plus its name in that
list."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]  # returns the summary prepare_data.py prints


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder holding other files; only this subcommand's outputs "
                        "(train/ val/ test/ and its images or masks) are replaced, other files are kept")
