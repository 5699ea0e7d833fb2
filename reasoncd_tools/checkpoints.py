"""Checkpoint folders: checking one before anything loads it, and writing small JSON files all at once."""

import json
import os
from pathlib import Path

# Files a checkpoint folder cannot load without (weights may also be sharded: an index names the shards).
REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer_config.json", "modeling_reasoncd.py",
                  "configuration_reasoncd.py", "processing_reasoncd.py")
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used; the message names the file and what is wrong with it."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); the checkpoint is damaged: copy or build it "
                              "again") from None


def _check_safetensors(path: Path) -> None:
    """The header is read and checked against the file's length, so a truncated download is caught here."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except Exception as error:  # safetensors raises its own SafetensorError for every kind of damage
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}); the file is damaged or "
                              "incomplete: copy or download it again") from None


def check_checkpoint(folder: Path) -> None:
    """Raise a clear error when `folder` is not a complete, readable ReasonCD checkpoint, before loading starts:
    FileNotFoundError for a missing folder or file, CheckpointError for a damaged one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {folder}: no such folder (build one with build_reasoncd.py or train.py)")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not ((folder / WEIGHTS).is_file() or (folder / WEIGHTS_INDEX).is_file()):
        missing.append(WEIGHTS)
    if missing:
        raise FileNotFoundError(f"--model {folder}: checkpoint folder is missing {', '.join(missing)}")
    for name in REQUIRED_FILES:
        if name.endswith(".json"):
            _read_json(folder / name)
    if (folder / WEIGHTS).is_file():
        shards = [WEIGHTS]
    else:
        index = _read_json(folder / WEIGHTS_INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder / WEIGHTS_INDEX}: no weight_map naming the weight files")
        shards = sorted(set(weight_map.values()))
        absent = [name for name in shards if not (folder / name).is_file()]
        if absent:
            raise FileNotFoundError(f"--model {folder}: checkpoint folder is missing {', '.join(absent)} (named in "
                                    f"{WEIGHTS_INDEX})")
    for name in shards:
        _check_safetensors(folder / name)


def write_json_atomic(path: Path, data) -> None:
    """JSON written to a temporary name and renamed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(data, indent=2, default=float))
    os.replace(partial, path)
