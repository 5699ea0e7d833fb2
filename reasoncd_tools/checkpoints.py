"""Writing output folders all at once: a failed or interrupted write leaves the previous folder (or none)."""

import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_output_dir(output_dir: Path):
    """Yields a staging folder beside `output_dir`; on success it replaces `output_dir`, on failure it is removed."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = output_dir.parent / f".{output_dir.name}.previous-{os.getpid()}"
    if output_dir.exists():
        os.replace(output_dir, previous)
    os.replace(staging, output_dir)
    shutil.rmtree(previous, ignore_errors=True)


def write_json_atomic(path: Path, data) -> None:
    """JSON written to a temporary name and renamed, so a reader never sees half a file."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(data, indent=2, default=float))
    os.replace(partial, path)
