"""SECOND-format change-detection data → one JSON sample per question.

SECOND (Yang et al.) stores a pair as ``im1/<name>``, ``im2/<name>`` (RGB images of T1 and T2) and
``label1/<name>``, ``label2/<name>``: RGB label maps where only changed pixels carry a class colour (the class at
that date) and unchanged pixels are white. A CRoI is a class plus a direction: ``decrease`` = ``label1 == c``,
``increase`` = ``label2 == c``, ``any`` = either.

:func:`convert_second` turns such a folder into the JSON layout the training code reads (paper Table II plus
metadata), with questions drawn from :mod:`reasoncd.data.questions`.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from reasoncd.data.commands import Subcommand, add_overwrite
from reasoncd.data.images import IMAGE_SUFFIXES, read_rgb
from reasoncd.data.samples import SEG, SPLITS, PrepareError, relative_path, split_pairs, write_sample
from reasoncd.io import OutputDir
from reasoncd.messages import listed, size_mismatch
from reasoncd.data.questions import (CLASSES, DIRECTIONS, GROUPS, MULTI_KIND, combination_question, corpus, group_covers,
                                     group_question, make_question)

# Class colours in CLASSES order.
SECOND_COLOURS: dict[str, tuple[int, int, int]] = {
    "water": (0, 0, 255),
    "ground": (128, 128, 128),
    "low_vegetation": (0, 128, 0),
    "tree": (0, 255, 0),
    "building": (128, 0, 0),
    "playground": (255, 0, 0),
}
UNCHANGED_COLOUR = (255, 255, 255)
SUBFOLDERS = ("im1", "im2", "label1", "label2")
# A class whose change covers less than this share of the pair is too small to ask about, and is not safely
# absent either: it gets no sample.
MIN_CHANGE_FRACTION = 0.001
FORMAT_VERSION = 4  # 2: plain answers name the CRoI; 3: right before [SEG]; 4: questions about several changes
# A question about several changes names two, sometimes three (this share of the time, when three changed).
THREE_PART_SHARE = 0.3
# Share of combination questions that also ask about a change that did not happen.
ABSENT_PART_SHARE = 0.5
# A training pair's copy with its dates swapped (`swapped_training_pairs`) is named by this prefix and its pair's
# name, so the copies sort after every original (a split's first pairs stay the originals).
SWAPPED_PREFIX = "swapped-"
CONVERTER = "prepare_data.py second"  # how output folders record this conversion (train.py's quickstart uses it too)

_KEYS = np.array([(r << 16) | (g << 8) | b for r, g, b in (*SECOND_COLOURS.values(), UNCHANGED_COLOUR)])
_VALUES = np.array([*range(len(CLASSES)), -1])
_ORDER = np.argsort(_KEYS)


def second_class_maps(label_rgb: np.ndarray) -> np.ndarray:
    """Map a SECOND RGB label (H, W, 3) to class indices in ``CLASSES`` order, -1 for unchanged (white).

    Raises ``PrepareError`` listing the colours that are not in the SECOND palette.
    """
    label_rgb = np.asarray(label_rgb)
    if label_rgb.ndim != 3 or label_rgb.shape[2] != 3:
        raise PrepareError(f"expected an RGB label of shape (H, W, 3), got {label_rgb.shape}")
    rgb = label_rgb.astype(np.int64)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    sorted_keys = _KEYS[_ORDER]
    position = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    known = sorted_keys[position] == keys
    if not known.all():
        bad = np.unique(keys[~known])
        shown = ", ".join(str((int(k) >> 16, int(k) >> 8 & 255, int(k) & 255)) for k in bad[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise PrepareError(f"colours outside the SECOND palette: {shown}{more}")
    return _VALUES[_ORDER][position].astype(np.int8)


def _load_label(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    try:
        return second_class_maps(rgb)
    except ValueError as error:
        raise PrepareError(f"{path}: {error}") from None


def _list_pairs(root: Path) -> dict[str, dict[str, Path]]:
    """``{stem: {subfolder: path}}`` after checking that the four folders match one to one."""
    missing = [name for name in SUBFOLDERS if not (root / name).is_dir()]
    if missing:
        raise PrepareError(f"{root} is not a SECOND-layout folder: missing {', '.join(missing)} (need {SUBFOLDERS})")
    files: dict[str, dict[str, Path]] = {}
    for name in SUBFOLDERS:
        for path in sorted((root / name).iterdir()):
            # Hidden files are editor, OS or interrupted-write leftovers, never pairs.
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            entry = files.setdefault(path.stem, {})
            if name in entry:
                raise PrepareError(f"two files for one pair in {name}/: {entry[name].name} and {path.name}")
            entry[name] = path
    if not files:
        raise PrepareError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}/{{{','.join(SUBFOLDERS)}}}")
    unmatched = []
    for paths in (files[stem] for stem in sorted(files)):
        if len(paths) < len(SUBFOLDERS):
            found = ", ".join(paths[name].relative_to(root).as_posix() for name in SUBFOLDERS if name in paths)
            lacking = ", ".join(f"{name}/" for name in SUBFOLDERS if name not in paths)
            unmatched.append(f"{found} (no match in {lacking})")
    if unmatched:
        raise PrepareError(f"unmatched file names in {root}: {listed(unmatched, separator='; ')}")
    return files


def _fingerprint(files: dict[str, dict[str, Path]], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update("\n".join(corpus()).encode())
    for stem in sorted(files):
        for name in SUBFOLDERS:
            stat = files[stem][name].stat()
            digest.update(f"{files[stem][name].resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _validate(files: dict[str, dict[str, Path]], progress: bool) -> dict[str, tuple[int, int]]:
    """Check sizes and label colours of every pair before anything is written; return the size per pair."""
    sizes: dict[str, tuple[int, int]] = {}
    mismatched: list[str] = []
    for stem in _progress(sorted(files), progress, "checking pairs"):
        found = {}
        for name in SUBFOLDERS:
            with Image.open(files[stem][name]) as image:
                found[f"{name}/{files[stem][name].name}"] = image.size[::-1]
        mismatch = size_mismatch(found)
        if mismatch:
            mismatched.append(mismatch)
            continue
        sizes[stem] = next(iter(found.values()))[::-1]
        for name in ("label1", "label2"):
            _load_label(files[stem][name])
    if mismatched:
        raise PrepareError("image sizes differ within a pair (height x width): " + listed(mismatched, separator="; "))
    return sizes


def _progress(items, enabled: bool, description: str):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description)


# With T1 and T2 swapped, an increase becomes a decrease of the same class and the other way round.
OPPOSITE_DIRECTION = {"increase": "decrease", "decrease": "increase"}


def mask_file_name(stem: str, croi: str, direction: str) -> str:
    """The file name of a pair's mask for one CRoI and direction (in the converted set's masks/ folder)."""
    return f"{stem}__{croi}__{direction}.png"


def swapped_order_truth_path(sample: dict) -> Path | None:
    """
    The mask file of the sample's CRoI in the opposite direction (its truth once T1 and T2 are swapped), for a
    present increase or decrease question of a converted SECOND-layout set; None for any other sample. The file may
    not exist: that direction changed too little to be asked about, and its truth counts as empty.
    """
    opposite = OPPOSITE_DIRECTION.get(sample.get("direction"))
    if opposite is None or SEG not in sample["answer"] or not sample.get("pair_id") or not sample.get("croi"):
        return None
    path = Path(sample["mask_path"])
    if path.name != mask_file_name(sample["pair_id"], sample["croi"], sample["direction"]):
        return None  # not named by the converter: the opposite direction's file cannot be found
    return path.with_name(mask_file_name(sample["pair_id"], sample["croi"], opposite))


def holds_in_both_orders(sample: dict) -> bool:
    """Whether the sample is a present question about one change that names no direction (``any``): its truth is
    the same with T1 and T2 swapped."""
    return sample.get("direction") == "any" and not sample.get("targets") and SEG in sample["answer"]


def land_cover_label_paths(sample: dict) -> tuple[Path, Path] | None:
    """
    The per-date label maps (``label1``, ``label2``) of a sample whose images sit in a SECOND layout's ``im1`` and
    ``im2`` folders, where both exist; None for any other sample.
    """
    paths = []
    for key, images, labels in (("img1_path", "im1", "label1"), ("img2_path", "im2", "label2")):
        image = Path(sample[key])
        if image.parent.name != images:
            return None
        label = image.parent.parent / labels / image.name
        if not label.is_file():
            return None
        paths.append(label)
    return paths[0], paths[1]


def read_land_cover(path, classes: tuple[str, ...] | list[str]) -> np.ndarray:
    """A SECOND label map as indices into ``classes`` (H, W) int64: ``len(classes)`` where the pixel did not change.
    Raises ``PrepareError`` naming the file for a colour outside the palette or a class missing from ``classes``."""
    rgb, _ = read_rgb(path)
    try:
        class_map = second_class_maps(rgb)
    except PrepareError as error:
        raise PrepareError(f"{path}: {error}") from error
    missing = sorted({CLASSES[i] for i in np.unique(class_map) if i >= 0} - set(classes))
    if missing:
        raise PrepareError(f"{path}: class {missing[0]!r} is not one of the model's land_cover_classes {list(classes)}")
    lookup = np.array([list(classes).index(name) if name in classes else -1 for name in CLASSES] + [len(classes)])
    return lookup[class_map]  # -1 (unchanged) picks the last entry


def _save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(path)


def _dominant(class_map: np.ndarray, where: np.ndarray) -> str | None:
    """The class covering most of ``where`` (at least half of it), or None when mixed or unchanged."""
    values = class_map[where]
    values = values[values >= 0]
    if values.size == 0:
        return None
    counts = np.bincount(values, minlength=len(CLASSES))
    best = int(counts.argmax())
    return CLASSES[best] if counts[best] * 2 >= where.sum() else None


def _change_area(label1: np.ndarray, label2: np.ndarray, croi: str, direction: str) -> np.ndarray:
    """Where a CRoI changed: ``increase`` where T2 shows the class, ``decrease`` where T1 did, ``any`` either."""
    index = CLASSES.index(croi)
    if direction == "increase":
        return label2 == index
    if direction == "decrease":
        return label1 == index
    return (label1 == index) | (label2 == index)


def _multi_questions(rng: random.Random, split: str, label1, label2, masks: dict, present: list[str],
                     untouched: list[str], count: int) -> list[dict]:
    """Up to ``count`` questions about several changes for a pair where two or more classes changed: explicit
    combinations of changed classes (sometimes with a class that did not change at all), or group questions whose
    covered changes each either happened (at least MIN_CHANGE_FRACTION of the pair) or left no pixel at all. Each
    sample's ``target_keys`` name the masks of its present targets, in the answer's order; ``masks`` gains the
    ``any`` masks they need."""
    if len(present) < 2:
        return []
    minimum = MIN_CHANGE_FRACTION * label1.size

    def state(croi: str, direction: str) -> bool | None:
        changed = int(_change_area(label1, label2, croi, direction).sum())
        return True if changed >= minimum else False if changed == 0 else None

    groups = [group for group in GROUPS
              if all(state(*part) is not None for part in group_covers(group))
              and any(state(*part) for part in group_covers(group))]
    samples = []
    for _ in range(count):
        if groups and rng.random() < 0.5:
            group = rng.choice(groups)
            sample = group_question(group, [part for part in group_covers(group) if state(*part)], rng=rng,
                                    split=split)
        else:
            size = 3 if len(present) >= 3 and rng.random() < THREE_PART_SHARE else 2
            parts = []
            for croi in rng.sample(present, size):
                direction = rng.choice([d for d in ("increase", "decrease") if f"{croi}/{d}" in masks] + ["any"])
                parts.append((croi, direction, True))
            if untouched and rng.random() < ABSENT_PART_SHARE:
                parts.insert(rng.randint(0, len(parts)), (rng.choice(untouched), rng.choice(DIRECTIONS), False))
            sample = combination_question(parts, rng=rng, split=split)
        keys = [f"{t['croi']}/{t['direction']}" for t in sample["targets"] if t["present"]]
        for key in keys:
            if key not in masks:
                masks[key] = _change_area(label1, label2, *key.split("/"))
        sample["target_keys"] = keys
        samples.append(sample)
    return samples


def _pair_samples(
    stem: str,
    split: str,
    label1: np.ndarray,
    label2: np.ndarray,
    *,
    seed: int,
    explanations: bool,
    negatives_per_pair: int,
    multi_per_pair: int = 1,
    opposite_negatives_per_pair: int = 0,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Questions for one pair and the masks they need, keyed ``croi/direction``."""
    rng = random.Random(f"{seed}:{stem}")
    minimum = MIN_CHANGE_FRACTION * label1.size
    masks: dict[str, np.ndarray] = {}
    present: list[str] = []
    untouched: list[str] = []
    one_way: list[tuple[str, str]] = []  # (class, the direction it did not change in at all)
    for index, croi in enumerate(CLASSES):
        decrease, increase = label1 == index, label2 == index
        if decrease.sum() >= minimum:
            masks[f"{croi}/decrease"] = decrease
        if increase.sum() >= minimum:
            masks[f"{croi}/increase"] = increase
        if f"{croi}/decrease" in masks or f"{croi}/increase" in masks:
            present.append(croi)
            if not decrease.any() or not increase.any():
                one_way.append((croi, "increase" if not increase.any() else "decrease"))
        elif not decrease.any() and not increase.any():
            untouched.append(croi)

    kinds = ["explicit", "implicit"] + (["explanation"] if explanations else [])
    samples = []
    for croi in present:
        # One question per changed class keeps the pair count moderate; "any" covers both directions.
        direction = rng.choice([d for d in ("increase", "decrease") if f"{croi}/{d}" in masks] + ["any"])
        if direction == "any":
            masks[f"{croi}/any"] = _change_area(label1, label2, croi, "any")
            counterpart = None
        else:
            # What the new class replaced, or what replaced the lost class.
            other_date = label1 if direction == "increase" else label2
            counterpart = _dominant(other_date, masks[f"{croi}/{direction}"])
        kind = rng.choice(kinds)
        sample = make_question(croi, direction, kind, rng=rng, split=split, counterpart=counterpart)
        sample["mask_key"] = f"{croi}/{direction}"
        samples.append(sample)
    for croi in rng.sample(untouched, min(negatives_per_pair, len(untouched))):
        sample = make_question(croi, rng.choice(("increase", "decrease", "any")), "absent", rng=rng, split=split)
        sample["mask_key"] = None
        samples.append(sample)
    # Drawn after the single questions, so those stay what they were before questions about several changes.
    samples += _multi_questions(rng, split, label1, label2, masks, present, untouched, multi_per_pair)
    # Drawn last, so that every other question stays what it was without them.
    if split == "train":
        for croi, direction in rng.sample(one_way, min(opposite_negatives_per_pair, len(one_way))):
            sample = make_question(croi, direction, "absent", rng=rng, split=split)
            sample["mask_key"] = None
            samples.append(sample)
    return samples, masks


def convert_second(
    root,
    output_dir,
    *,
    seed: int = 0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    explanations: bool = True,
    negatives_per_pair: int = 1,
    multi_per_pair: int = 1,
    opposite_negatives_per_pair: int = 0,
    swapped_training_pairs: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Convert a SECOND-layout folder to JSON samples under ``output_dir/{train,val,test}/``.

    Each JSON holds ``img1_path``, ``img2_path``, ``mask_path``, ``question``, ``answer`` (paths relative to the
    JSON's folder) and ``kind``, ``croi``, ``direction``, ``heldout``, ``pair_id``, ``other_masks`` (``croi/direction``
    → mask path, for the other classes that changed on the pair). Masks are 0/255 PNGs in ``output_dir/masks``.
    On pairs where two or more classes changed, ``multi_per_pair`` questions about several changes (kind ``multi``)
    each list their ``targets`` (``croi``, ``direction``, ``label``, ``present``, and a present one's
    ``mask_path``, in the order of the answer's ``[SEG]`` tokens); their ``mask_path`` is the targets' union.
    With ``swapped_training_pairs`` every training pair is written a second time with T1 and T2 swapped (and
    label1 and label2, so each increase becomes the decrease it is seen backwards), under the pair id
    ``swapped-<name>`` with questions drawn for it; validation and test pairs are never swapped.

    Every input is validated before anything is written (``PrepareError`` naming the files). The output folder
    follows reasoncd.io (new, empty, or written by this conversion before; ``overwrite`` writes
    beside other files); the result is built in a temporary sibling folder and put in place at the end.
    ``manifest.json`` records the inputs and settings, and a second call with the same inputs and settings returns
    the stored summary without work.
    """
    root = Path(root).resolve()
    for name, value in (("negatives_per_pair", negatives_per_pair), ("multi_per_pair", multi_per_pair),
                        ("opposite_negatives_per_pair", opposite_negatives_per_pair)):
        if value < 0:
            raise PrepareError(f"{name} must be >= 0, got {value}")
    output = OutputDir(output_dir, CONVERTER, inputs=[root], overwrite=overwrite)
    output_dir = output.path
    manifest_path = output_dir / "manifest.json"
    files = _list_pairs(root)
    if swapped_training_pairs:
        taken = sorted(stem for stem in files if stem.startswith(SWAPPED_PREFIX))
        if taken:
            raise PrepareError(f"{root}: pair {taken[0]!r} already starts with {SWAPPED_PREFIX!r}, the name of the "
                               "swapped copies; rename it or convert without swapped_training_pairs")
    settings = {
        "seed": seed,
        "split": list(split),
        "explanations": explanations,
        "negatives_per_pair": negatives_per_pair,
        "multi_per_pair": multi_per_pair,
        "opposite_negatives_per_pair": opposite_negatives_per_pair,
        "swapped_training_pairs": swapped_training_pairs,
        "format_version": FORMAT_VERSION,
        "min_change_fraction": MIN_CHANGE_FRACTION,
    }
    fingerprint = _fingerprint(files, settings)
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fingerprint:
            return manifest["summary"]

    splits = split_pairs(files, seed, split)
    sizes = _validate(files, progress)

    with output.staged() as staging:
        summary = _write(files, splits, sizes, staging, output_dir, seed, explanations, negatives_per_pair,
                         multi_per_pair, opposite_negatives_per_pair, swapped_training_pairs, progress)
        manifest = {"fingerprint": fingerprint, "root": str(root), "settings": settings, "summary": summary}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return summary


def _pairs_to_write(files, splits, swapped_training_pairs: bool) -> list[tuple[str, str, str, dict[str, Path]]]:
    """``(pair id, split, source pair, files)`` for every pair to write: the originals in name order, then, with
    ``swapped_training_pairs``, each training pair's copy with T1 and T2 (and their labels) swapped."""
    pairs = [(stem, splits[stem], stem, files[stem]) for stem in sorted(files)]
    if swapped_training_pairs:
        pairs += [(SWAPPED_PREFIX + stem, split, stem, {"im1": paths["im2"], "im2": paths["im1"],
                                                        "label1": paths["label2"], "label2": paths["label1"]})
                  for stem, split, _, paths in list(pairs) if split == "train"]
    return pairs


def _write(files, splits, sizes, staging: Path, output_dir: Path, seed, explanations, negatives_per_pair,
           multi_per_pair, opposite_negatives_per_pair, swapped_training_pairs, progress):
    """Write masks and JSONs into ``staging``, with paths computed as if it were already ``output_dir``."""
    (staging / "masks").mkdir(parents=True)
    for name in SPLITS:
        (staging / name).mkdir()
    pairs, samples_per_split, kinds, heldout = Counter(), Counter(), Counter(), Counter()
    changed_pixels = total_pixels = mismatch_pixels = 0
    empty_masks: set[tuple[int, int]] = set()

    for stem, split_name, source, paths in _progress(_pairs_to_write(files, splits, swapped_training_pairs), progress,
                                             "writing samples"):
        label1 = _load_label(paths["label1"])
        label2 = _load_label(paths["label2"])
        pairs[split_name] += 1
        changed_pixels += int(((label1 >= 0) | (label2 >= 0)).sum())
        mismatch_pixels += int(((label1 >= 0) != (label2 >= 0)).sum())
        total_pixels += label1.size
        samples, masks = _pair_samples(
            stem, split_name, label1, label2, seed=seed, explanations=explanations,
            negatives_per_pair=negatives_per_pair, multi_per_pair=multi_per_pair,
            opposite_negatives_per_pair=opposite_negatives_per_pair,
        )
        mask_names = {key: mask_file_name(stem, *key.split("/")) for key in masks}
        for key, mask in masks.items():
            _save_mask(mask, staging / "masks" / mask_names[key])
        width, height = sizes[source]
        empty_name = f"empty_{width}x{height}.png"
        if samples and any("mask_key" in s and s["mask_key"] is None for s in samples) and (width, height) not in empty_masks:
            _save_mask(np.zeros((height, width), dtype=bool), staging / "masks" / empty_name)
            empty_masks.add((width, height))

        json_dir = output_dir / split_name
        multi_index = 0
        for sample in samples:
            extra = {}
            if sample["kind"] == MULTI_KIND:
                # The union of the targets' masks is the question's mask; each target keeps its own file.
                multi_index += 1
                keys = sample.pop("target_keys")
                mask_name = f"{stem}__multi{multi_index}.png"
                _save_mask(np.any([masks[key] for key in keys] or [np.zeros_like(label1, dtype=bool)], axis=0),
                           staging / "masks" / mask_name)
                files_of = iter(keys)
                extra = {"style": sample["style"], "group": sample["group"], "targets": [
                    {**target, "mask_path": relative_path(output_dir / "masks" / mask_names[next(files_of)],
                                                          json_dir) if target["present"] else None}
                    for target in sample["targets"]]}
                others = {}
                name = f"{stem}__multi{multi_index}.json"
            else:
                key = sample.pop("mask_key")
                mask_name = mask_names[key] if key else empty_name
                others = {
                    other: relative_path(output_dir / "masks" / mask_names[other], json_dir)
                    for other in sorted(masks)
                    if other.split("/")[0] != sample["croi"] and not other.endswith("/any")
                }
                name = f"{stem}__{sample['croi']}__{sample['direction']}.json"
            write_sample(staging / split_name / name, json_dir, img1=paths["im1"], img2=paths["im2"],
                         mask=output_dir / "masks" / mask_name, question=sample["question"],
                         answer=sample["answer"], kind=sample["kind"], croi=sample["croi"],
                         direction=sample["direction"], heldout=sample["heldout"], pair_id=stem, other_masks=others,
                         **extra)
            samples_per_split[split_name] += 1
            kinds[sample["kind"]] += 1
            heldout[split_name] += int(sample["heldout"])

    return {
        "pairs": {name: pairs[name] for name in SPLITS},
        "samples": {name: samples_per_split[name] for name in SPLITS},
        "kinds": dict(sorted(kinds.items())),
        "heldout_samples": {name: heldout[name] for name in SPLITS},
        "change_fraction": changed_pixels / max(total_pixels, 1),
        "label_mismatch_pixels": mismatch_pixels,
    }


# ---------------------------------------------------------------------------------------- prepare_data.py command


def _arguments(parser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="SECOND folder")
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seed of the 8:1:1 split (default 0)")
    parser.add_argument("--no_explanations", action="store_true", help="plain answers only (no explanation samples)")
    parser.add_argument("--negatives_per_pair", type=int, default=1,
                        help="absent-class questions per pair (default 1)")
    parser.add_argument("--multi_per_pair", type=int, default=1,
                        help="questions about several changes per pair where two or more classes changed (default 1)")
    parser.add_argument("--opposite_negatives_per_pair", type=int, default=0,
                        help="training pairs only: absent questions about the direction a changed class did not "
                             "change in (e.g. demolished buildings where buildings were only built; default 0)")
    parser.add_argument("--swapped_training_pairs", action="store_true",
                        help="also write every training pair with T1 and T2 swapped (new buildings seen backwards "
                             "are demolished ones), as a pair of its own with its own questions")
    add_overwrite(parser)


def _run(args) -> dict:
    return convert_second(args.root, args.output_dir, seed=args.seed, explanations=not args.no_explanations,
                          negatives_per_pair=args.negatives_per_pair, multi_per_pair=args.multi_per_pair,
                          opposite_negatives_per_pair=args.opposite_negatives_per_pair,
                          swapped_training_pairs=args.swapped_training_pairs, overwrite=args.overwrite)


SECOND = Subcommand("second", "make CRoI samples from SECOND's semantic change labels", _arguments, _run)
