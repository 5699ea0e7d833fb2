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
from reasoncd.data.images import IMAGE_SUFFIXES
from reasoncd.data.samples import SPLITS, PrepareError, relative_path, split_pairs, write_sample
from reasoncd.io import OutputDir
from reasoncd.messages import listed, size_mismatch
from reasoncd.data.questions import CLASSES, corpus, make_question

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
FORMAT_VERSION = 3  # 2: plain answers name the CRoI; 3: right before [SEG]
CONVERTER = "prepare_data.py second"  # how output folders record this conversion (train.py's quickstart uses it too)
# Added to the pair id (and file names) of a training pair's copy with its dates exchanged (`temporal_swap`).
SWAPPED_SUFFIX = "-swapped"

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


def mask_file_name(stem: str, croi: str, direction: str) -> str:
    """The file name of a pair's mask for one CRoI and direction (in the converted set's masks/ folder)."""
    return f"{stem}__{croi}__{direction}.png"


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


def _pair_samples(
    stem: str,
    split: str,
    label1: np.ndarray,
    label2: np.ndarray,
    *,
    seed: int,
    explanations: bool,
    negatives_per_pair: int,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Questions for one pair and the masks they need, keyed ``croi/direction``."""
    rng = random.Random(f"{seed}:{stem}")
    minimum = MIN_CHANGE_FRACTION * label1.size
    masks: dict[str, np.ndarray] = {}
    present: list[str] = []
    untouched: list[str] = []
    for index, croi in enumerate(CLASSES):
        decrease, increase = label1 == index, label2 == index
        if decrease.sum() >= minimum:
            masks[f"{croi}/decrease"] = decrease
        if increase.sum() >= minimum:
            masks[f"{croi}/increase"] = increase
        if f"{croi}/decrease" in masks or f"{croi}/increase" in masks:
            present.append(croi)
        elif not decrease.any() and not increase.any():
            untouched.append(croi)

    kinds = ["explicit", "implicit"] + (["explanation"] if explanations else [])
    samples = []
    for croi in present:
        # One question per changed class keeps the pair count moderate; "any" covers both directions.
        direction = rng.choice([d for d in ("increase", "decrease") if f"{croi}/{d}" in masks] + ["any"])
        index = CLASSES.index(croi)
        if direction == "any":
            masks[f"{croi}/any"] = (label1 == index) | (label2 == index)
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
    return samples, masks


def convert_second(
    root,
    output_dir,
    *,
    seed: int = 0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    explanations: bool = True,
    negatives_per_pair: int = 1,
    temporal_swap: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Convert a SECOND-layout folder to JSON samples under ``output_dir/{train,val,test}/``.

    Each JSON holds ``img1_path``, ``img2_path``, ``mask_path``, ``question``, ``answer`` (paths relative to the
    JSON's folder) and ``kind``, ``croi``, ``direction``, ``heldout``, ``pair_id``, ``other_masks`` (``croi/direction``
    → mask path, for the other classes that changed on the pair). Masks are 0/255 PNGs in ``output_dir/masks``.

    ``temporal_swap`` adds every training pair a second time with its dates exchanged (pair id + ``-swapped``): what
    was built is then demolished, so the same pixels answer the opposite direction's questions and the direction
    can only be read from which image is T1. Validation and test pairs are never swapped.

    Every input is validated before anything is written (``PrepareError`` naming the files). The output folder
    follows reasoncd.io (new, empty, or written by this conversion before; ``overwrite`` writes
    beside other files); the result is built in a temporary sibling folder and put in place at the end.
    ``manifest.json`` records the inputs and settings, and a second call with the same inputs and settings returns
    the stored summary without work.
    """
    root = Path(root).resolve()
    if negatives_per_pair < 0:
        raise PrepareError(f"negatives_per_pair must be >= 0, got {negatives_per_pair}")
    output = OutputDir(output_dir, CONVERTER, inputs=[root], overwrite=overwrite)
    output_dir = output.path
    manifest_path = output_dir / "manifest.json"
    files = _list_pairs(root)
    settings = {
        "seed": seed,
        "split": list(split),
        "explanations": explanations,
        "negatives_per_pair": negatives_per_pair,
        "temporal_swap": temporal_swap,
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
                         temporal_swap, progress)
        manifest = {"fingerprint": fingerprint, "root": str(root), "settings": settings, "summary": summary}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return summary


def _write(files, splits, sizes, staging: Path, output_dir: Path, seed, explanations, negatives_per_pair,
           temporal_swap, progress):
    """Write masks and JSONs into ``staging``, with paths computed as if it were already ``output_dir``."""
    (staging / "masks").mkdir(parents=True)
    for name in SPLITS:
        (staging / name).mkdir()
    pairs, samples_per_split, kinds, heldout = Counter(), Counter(), Counter(), Counter()
    changed_pixels = total_pixels = mismatch_pixels = swapped = 0
    empty_masks: set[tuple[int, int]] = set()

    for stem in _progress(sorted(files), progress, "writing samples"):
        split_name = splits[stem]
        label1 = _load_label(files[stem]["label1"])
        label2 = _load_label(files[stem]["label2"])
        pairs[split_name] += 1
        changed_pixels += int(((label1 >= 0) | (label2 >= 0)).sum())
        mismatch_pixels += int(((label1 >= 0) != (label2 >= 0)).sum())
        total_pixels += label1.size
        orders = [(stem, files[stem]["im1"], files[stem]["im2"], label1, label2)]
        if temporal_swap and split_name == "train":
            orders.append((stem + SWAPPED_SUFFIX, files[stem]["im2"], files[stem]["im1"], label2, label1))
            swapped += 1
        for pair_id, img1, img2, first, second in orders:
            samples, masks = _pair_samples(
                pair_id, split_name, first, second, seed=seed, explanations=explanations,
                negatives_per_pair=negatives_per_pair,
            )
            mask_names = {key: mask_file_name(pair_id, *key.split("/")) for key in masks}
            for key, mask in masks.items():
                _save_mask(mask, staging / "masks" / mask_names[key])
            width, height = sizes[stem]
            empty_name = f"empty_{width}x{height}.png"
            if samples and any(s["mask_key"] is None for s in samples) and (width, height) not in empty_masks:
                _save_mask(np.zeros((height, width), dtype=bool), staging / "masks" / empty_name)
                empty_masks.add((width, height))

            json_dir = output_dir / split_name
            for sample in samples:
                key = sample.pop("mask_key")
                mask_name = mask_names[key] if key else empty_name
                others = {
                    other: relative_path(output_dir / "masks" / mask_names[other], json_dir)
                    for other in sorted(masks)
                    if other.split("/")[0] != sample["croi"] and not other.endswith("/any")
                }
                name = f"{pair_id}__{sample['croi']}__{sample['direction']}.json"
                write_sample(staging / split_name / name, json_dir, img1=img1, img2=img2,
                             mask=output_dir / "masks" / mask_name, question=sample["question"],
                             answer=sample["answer"], kind=sample["kind"], croi=sample["croi"],
                             direction=sample["direction"], heldout=sample["heldout"], pair_id=pair_id,
                             other_masks=others)
                samples_per_split[split_name] += 1
                kinds[sample["kind"]] += 1
                heldout[split_name] += int(sample["heldout"])

    return {
        "pairs": {name: pairs[name] for name in SPLITS},
        "swapped_training_pairs": swapped,
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
    parser.add_argument("--temporal_swap", action="store_true",
                        help="add every training pair a second time with T1 and T2 exchanged (and its questions "
                             "for the opposite directions)")
    add_overwrite(parser)


def _run(args) -> dict:
    return convert_second(args.root, args.output_dir, seed=args.seed, explanations=not args.no_explanations,
                          negatives_per_pair=args.negatives_per_pair, temporal_swap=args.temporal_swap,
                          overwrite=args.overwrite)


SECOND = Subcommand("second", "make CRoI samples from SECOND's semantic change labels", _arguments, _run)
