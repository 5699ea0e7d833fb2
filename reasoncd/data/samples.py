"""The sample format (one JSON per sample, paper Table II), its validation, and the training collator.

A sample: `img1_path`, `img2_path`, `mask_path`, `question`, `answer` (paths relative to the JSON file), plus
optional metadata the evaluation reads: `kind`, `croi`, `direction`, `heldout`, `pair_id`, `other_masks`. A question
about several changes also lists its `targets`, each `{"label", "present", "mask_path", "croi", "direction"}`: the
present ones in the order of the answer's `[SEG]` tokens, each with its own mask (`mask_path` is then their union),
the absent ones with a null `mask_path`.
"""

import json
import os
import random
from pathlib import Path

import numpy as np

from reasoncd.data.images import read_mask, read_rgb
from reasoncd.io import write_json_atomic
from reasoncd.messages import listed, size_mismatch

REQUIRED_FIELDS = ("img1_path", "img2_path", "mask_path", "question", "answer")
PATH_FIELDS = ("img1_path", "img2_path", "mask_path")
SPLITS = ("train", "val", "test")  # the folders of a data set, each holding sample JSON files
# processing_reasoncd.SEG_TOKEN, spelled out so that reading and writing samples does not import torch (prepare_data.py
# cuts mosaics within a memory bound that torch alone would exceed).
SEG = "[SEG]"


class SampleError(ValueError):
    """A split that cannot be used; the message lists each bad file and field."""


class PrepareError(ValueError):
    """A data set that cannot be turned into samples (prepare_data.py); the message names the files and what is
    wrong, and is shown without a traceback."""


def split_pairs(ids, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, str]:
    """Assign pair ids to train/val/test by `fractions` (8:1:1): a seeded shuffle of the sorted ids, so the split
    does not depend on listing order, and every sample of a pair lands in the same split."""
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise PrepareError(f"split must be three non-negative fractions (train, val, test), got {fractions}")
    total = sum(fractions)
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    count = len(order)
    # Round, but give val and test at least one pair when there are enough pairs for all three.
    n_val = round(count * fractions[1] / total)
    n_test = round(count * fractions[2] / total)
    if count >= 3:
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    n_train = count - n_val - n_test
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return dict(zip(order, names))


def relative_path(target, start) -> str:
    """`target` relative to the folder `start`, with forward slashes (as samples store their paths)."""
    return Path(os.path.relpath(target, start)).as_posix()


def write_sample(path, folder, *, img1, img2, mask, question: str, answer: str, **metadata) -> None:
    """Writes one sample JSON at `path`. The image and mask paths are stored relative to `folder`, the folder the
    JSON file ends up in (which `path` may differ from while a data set is built in a staging folder)."""
    record = {"img1_path": relative_path(img1, folder), "img2_path": relative_path(img2, folder),
              "mask_path": relative_path(mask, folder), "question": question, "answer": answer, **metadata}
    write_json_atomic(path, record)


def _resolve(json_path: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (json_path.parent / path).resolve()


def read_sample(json_path: Path) -> tuple[dict | None, list[str]]:
    """One sample with absolute paths, or the problems that make it unusable."""
    try:
        raw = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return None, [f"{json_path}: not readable JSON ({error})"]
    if not isinstance(raw, dict):
        return None, [f"{json_path}: expected a JSON object, got {type(raw).__name__}"]
    problems = []
    for field in REQUIRED_FIELDS:
        if field not in raw:
            problems.append(f"{json_path}: field '{field}' is missing")
        elif not isinstance(raw[field], str) or not raw[field].strip():
            problems.append(f"{json_path}: field '{field}' must be a non-empty string")
    if problems:
        return None, problems
    sample = dict(raw)
    for field in PATH_FIELDS:
        sample[field] = str(_resolve(json_path, raw[field]))
        if not Path(sample[field]).is_file():
            problems.append(f"{json_path}: field '{field}' points at a missing file {sample[field]}")
    sample["other_masks"] = {key: str(_resolve(json_path, value))
                             for key, value in (raw.get("other_masks") or {}).items()}
    if "targets" in raw:
        sample["targets"], issues = _read_targets(json_path, raw)
        problems += issues
    sample.setdefault("kind", "explicit" if SEG in raw["answer"] else "absent")
    sample.setdefault("pair_id", Path(raw["img1_path"]).stem)
    sample.setdefault("heldout", False)
    sample.setdefault("croi", "")
    sample.setdefault("direction", "")
    sample["source"] = str(json_path)
    return (None if problems else sample), problems


def _read_targets(json_path: Path, raw: dict) -> tuple[list[dict], list[str]]:
    """A sample's `targets` with absolute mask paths, or the problems: each needs a `label` and `present`, a present
    one an existing `mask_path`, and the answer one `[SEG]` per present target."""
    targets = raw["targets"]
    if not isinstance(targets, list) or not targets:
        return [], [f"{json_path}: field 'targets' must be a non-empty list"]
    problems, resolved = [], []
    for index, target in enumerate(targets):
        where = f"{json_path}: targets[{index}]"
        if not isinstance(target, dict) or not isinstance(target.get("label"), str) or not target["label"].strip() \
                or not isinstance(target.get("present"), bool):
            problems.append(f"{where} must be an object with a non-empty 'label' and a true/false 'present'")
            continue
        entry = dict(target)
        if target["present"]:
            if not isinstance(target.get("mask_path"), str) or not target["mask_path"].strip():
                problems.append(f"{where}: a present target needs a 'mask_path'")
                continue
            entry["mask_path"] = str(_resolve(json_path, target["mask_path"]))
            if not Path(entry["mask_path"]).is_file():
                problems.append(f"{where}: 'mask_path' points at a missing file {entry['mask_path']}")
        resolved.append(entry)
    present = sum(bool(target.get("present")) for target in targets if isinstance(target, dict))
    if not problems and raw["answer"].count(SEG) != present:
        problems.append(f"{json_path}: the answer holds {raw['answer'].count(SEG)} {SEG} but 'targets' lists "
                        f"{present} present; each present target needs its own {SEG}")
    return resolved, problems


def load_split(data_dir, split: str, *, limit: int | None = None) -> list[dict]:
    """All samples of `data_dir/split`, validated up front: every problem of the split is reported at once."""
    folder = Path(data_dir) / split
    if not folder.is_dir():
        raise SampleError(f"{folder}: no such split folder (expected {'/, '.join(SPLITS)}/ under {data_dir})")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SampleError(f"{folder}: the split is empty (no *.json samples)")
    samples, problems = [], []
    for json_path in files:
        sample, issues = read_sample(json_path)
        problems += issues
        if sample is not None:
            samples.append(sample)
    if problems:
        raise SampleError(f"{len(problems)} problem(s) in {folder}:\n  {listed(problems)}")
    return samples[:limit] if limit else samples


def training_sample(samples: list[dict], size: int) -> list[dict]:
    """The first pairs of a split (in file-name order) with about `size` questions, whole pairs: the same sample in
    every run on the same data (train.py scores it beside the test split)."""
    chosen, pairs = [], set()
    for sample in sorted(samples, key=lambda s: s["source"]):
        key = (sample["img1_path"], sample["img2_path"])
        if key not in pairs and len(chosen) >= size:
            break
        pairs.add(key)
        chosen.append(sample)
    return chosen if size else []


def group_by_pair(samples: list[dict]) -> list[dict]:
    """One entry per image pair with all its questions, so a batch encodes and fuses each pair once."""
    groups: dict[tuple[str, str], dict] = {}
    for sample in samples:
        key = (sample["img1_path"], sample["img2_path"])
        group = groups.setdefault(key, {"img1_path": key[0], "img2_path": key[1], "pair_id": sample["pair_id"],
                                        "questions": [], "answers": [], "mask_paths": [], "target_mask_paths": []})
        group["questions"].append(sample["question"])
        group["answers"].append(sample["answer"])
        group["mask_paths"].append(sample["mask_path"])
        group["target_mask_paths"].append(target_mask_paths(sample))
    return list(groups.values())


def load_images(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """T1 and T2 as HxWx3 uint8, which must have the same size."""
    image_t1, _ = read_rgb(sample["img1_path"])
    image_t2, _ = read_rgb(sample["img2_path"])
    mismatch = size_mismatch({"T1": image_t1.shape[:2], "T2": image_t2.shape[:2]})
    if mismatch:
        raise SampleError(f"{sample.get('source', sample['img1_path'])}: {mismatch} (height x width); the two dates "
                          "must have the same size")
    return image_t1, image_t2


def load_mask(sample: dict, size: tuple[int, int]) -> np.ndarray:
    """The sample's mask (HxW bool); an answer without `[SEG]` always has an empty mask."""
    if SEG not in sample["answer"]:
        return np.zeros(size, dtype=bool)
    mask = read_mask(sample["mask_path"])
    if mask.shape != tuple(size):
        raise SampleError(f"{sample['mask_path']}: mask {mask.shape} does not match the images {tuple(size)}")
    return mask


def target_mask_paths(sample: dict) -> list[str]:
    """The mask files of a question about several changes, one per `[SEG]` of its answer, in order; [] for a
    question about one change (its `mask_path` is the mask of its `[SEG]`)."""
    return [target["mask_path"] for target in sample.get("targets") or [] if target["present"]]


def load_target_masks(sample: dict, size: tuple[int, int]) -> list[np.ndarray]:
    """One mask per `[SEG]` of the sample's answer, in order: its targets' masks, or its one mask."""
    paths = target_mask_paths(sample)
    if not paths:
        return [load_mask(sample, size)] if SEG in sample["answer"] else []
    masks = [read_mask(path) for path in paths]
    for path, mask in zip(paths, masks):
        if mask.shape != tuple(size):
            raise SampleError(f"{path}: mask {mask.shape} does not match the images {tuple(size)}")
    return masks


def load_pair(sample: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1, T2 and the mask of one sample."""
    image_t1, image_t2 = load_images(sample)
    return image_t1, image_t2, load_mask(sample, image_t1.shape[:2])
