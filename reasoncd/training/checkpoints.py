"""Training checkpoints that a kill at any moment cannot corrupt, and the rule for which one a run resumes from.

A checkpoint is written into a hidden staging folder (`OUTPUT_DIR/checkpoints/.partial/checkpoint-N`), finished with a
manifest that lists every file and its size, and only then renamed to `checkpoints/checkpoint-N`. A folder of that
name is therefore always whole; one being written when the process died stays under `.partial/` (removed by the next
save) and is never resumed from. Old checkpoints are retired the same way: renamed away first, then deleted, so a
kill never leaves half a checkpoint under a resumable name. Resuming checks the manifest, which also catches a
checkpoint damaged or truncated afterwards (a copy that stopped half-way).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from reasoncd.io import write_json_atomic

STAGING = ".partial"  # hidden folder beside the checkpoints: checkpoints being written or being deleted
MANIFEST = "reasoncd-checkpoint.json"  # written last: {"global_step": N, "files": {relative path: size in bytes}}
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path) -> int | None:
    """N of a `checkpoint-N` folder, or None for any other name."""
    match = CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def write_manifest(folder, global_step: int) -> None:
    """Record every file of a finished checkpoint folder (written last, atomically)."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    write_json_atomic(folder / MANIFEST, {"global_step": global_step, "files": files})


def checkpoint_problem(folder) -> str | None:
    """Why `folder` is not a whole checkpoint to resume from, or None when it is."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files, step = dict(manifest["files"]), int(manifest["global_step"])
    except FileNotFoundError:
        return (f"no {MANIFEST}: its save did not finish (or an older train.py wrote it), so it may lack files")
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is not readable"
    if checkpoint_step(folder) not in (None, step):
        return f"{MANIFEST} is for step {step}, not for {folder.name}"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    if "trainer_state.json" not in files:
        return "it holds no trainer_state.json"
    return None


def last_complete_checkpoint(checkpoints) -> tuple[Path | None, dict[str, str]]:
    """The whole checkpoint of the highest step in `checkpoints` (or None), and {name: problem} of the newer or
    other checkpoint-N folders that were passed over."""
    checkpoints = Path(checkpoints)
    candidates = sorted((p for p in checkpoints.iterdir() if checkpoint_step(p) is not None and p.is_dir()),
                        key=checkpoint_step, reverse=True) if checkpoints.is_dir() else []
    skipped = {}
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate, skipped
        skipped[candidate.name] = problem
    return None, skipped


def clear_staging(checkpoints) -> None:
    """Remove what an interrupted save or deletion left under `checkpoints/.partial` (this command's own files)."""
    shutil.rmtree(Path(checkpoints) / STAGING, ignore_errors=True)


def publish(staged, target) -> None:
    """Put a finished staged checkpoint in place under its final name (replacing one of the same name)."""
    staged, target = Path(staged), Path(target)
    if target.exists():
        retire(target)
    os.replace(staged, target)


def retire(checkpoint) -> None:
    """Delete a checkpoint folder: renamed into the staging folder first, so it never exists half-deleted."""
    checkpoint = Path(checkpoint)
    trash = checkpoint.parent / STAGING / f"deleting-{checkpoint.name}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(checkpoint, trash)
    shutil.rmtree(trash, ignore_errors=True)


def resume_point(value, checkpoints: Path):
    """The checkpoint --resume_from_checkpoint names: its folder as given, or for `auto` the last whole one in
    `checkpoints` (each one passed over is said, and why), or None to start fresh."""
    if value != "auto":
        return value
    resume, skipped = last_complete_checkpoint(checkpoints)
    for name, problem in skipped.items():
        print(f"not resuming from {checkpoints / name}: {problem}")
    print(f"resuming from {resume}" if resume else "no checkpoint to resume from: starting fresh")
    return resume
