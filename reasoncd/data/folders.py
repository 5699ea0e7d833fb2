"""Change-detection data sets as ReasonCD samples (one JSON file per image pair, see `reasoncd.data.samples`):
BCDD's mosaics cut into tiles (`prepare_bcdd`) and folder layouts such as LEVIR-CD's A/B/label (`find_layout`,
`prepare_folder`). SECOND's semantic labels are `reasoncd.data.second`. `prepare_data.py` is the command line.

Every function checks its input and its output folder first (unmatched file names, size mismatches, non-binary
labels; an output folder it may not write, see `reasoncd.io`), writes into a temporary folder beside the output
folder and puts the result in place at the end, so a failure leaves no partial output.
"""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
from tqdm import tqdm

from reasoncd.data.commands import Subcommand, add_overwrite
from reasoncd.data.images import (ImageReadError, Mosaic, binarize_label, image_size, images_by_stem,
                                  read_mask, to_rgb8)
from reasoncd.data.samples import SPLITS, PrepareError, relative_path, split_pairs, write_sample
from reasoncd.io import OutputDir, write_png_atomic
from reasoncd.messages import listed, size_mismatch

PLAIN_ANSWER = "It's [SEG]."
ABSENT_ANSWER = "There is no change of interest in these images."
# Folder names of the common change-detection layouts (LEVIR-CD, WHU-CD, DSIFN, CDD, S2Looking, ...), matched
# without regard to case.
IMAGE_FOLDER_PAIRS = (
    ("a", "b"),
    ("im1", "im2"),
    ("image1", "image2"),
    ("t1", "t2"),
    ("prev", "curr"),
    ("before", "after"),
    ("time1", "time2"),
)
LABEL_FOLDERS = ("label", "labels", "mask", "gt", "cd")


def _problems(title: str, problems: list[str]) -> PrepareError:
    return PrepareError(f"{title}\n  {listed(problems)}")


# ----------------------------------------------------------------------------------------------------------- bcdd


def tile_name(top: int, left: int) -> str:
    return f"r{top:06d}_c{left:06d}"


def prepare_bcdd(
    t1,
    t2,
    label,
    output_dir,
    tile: int = 256,
    seed: int = 0,
    question: str = "Building",
    threshold: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Cut co-registered T1/T2 mosaics and their change label into non-overlapping `tile`-pixel tiles.

    Partial tiles at the right and bottom edges are dropped (BCDD's 32,507 x 15,354 gives 126 x 59 = 7,434 pairs).
    Tiles are PNG files under OUT/images/{t1,t2,label}/ named by their pixel offset (`r000256_c000512.png`), the
    samples JSON files under OUT/{train,val,test}/. Mosaics are read one row of tiles at a time (see
    reasoncd.data.images.Mosaic), so a TIFF mosaic never sits whole in memory. Returns the summary.
    """
    if tile < 1:
        raise PrepareError(f"--tile must be positive, got {tile}")
    output = OutputDir(output_dir, "prepare_data.py bcdd", inputs=[t1, t2, label], overwrite=overwrite)
    with ExitStack() as stack:
        t1_mosaic, t2_mosaic, label_mosaic = (stack.enter_context(Mosaic(path)) for path in (t1, t2, label))
        sizes = {m.path: (m.height, m.width) for m in (t1_mosaic, t2_mosaic, label_mosaic)}
        if size_mismatch(sizes):
            raise _problems(
                "T1, T2 and label sizes differ (height x width):", [f"{p}: {h} x {w}" for p, (h, w) in sizes.items()]
            )
        for mosaic in (t1_mosaic, t2_mosaic):
            if mosaic.dtype != np.uint8:
                raise PrepareError(
                    f"{mosaic.path}: {mosaic.dtype} pixels; bcdd needs 8-bit mosaics so that every tile is scaled"
                    " alike (convert first, e.g. gdal_translate -ot Byte -scale)"
                )
        height, width = t1_mosaic.height, t1_mosaic.width
        rows, columns = height // tile, width // tile
        if not rows or not columns:
            raise PrepareError(f"the mosaics ({height} x {width}) are smaller than one {tile}-pixel tile")
        names = [tile_name(row * tile, column * tile) for row in range(rows) for column in range(columns)]
        splits = split_pairs(names, seed)

        changed = 0
        with output.staged() as staging:
            for row in tqdm(range(rows), desc="bcdd", unit="tile row"):
                top = row * tile
                band_t1 = to_rgb8(t1_mosaic.read_rows(top, top + tile), alpha=t1_mosaic.alpha)[0]
                band_t2 = to_rgb8(t2_mosaic.read_rows(top, top + tile), alpha=t2_mosaic.alpha)[0]
                band_label = label_mosaic.read_rows(top, top + tile)
                if label_mosaic.alpha:
                    band_label = band_label[..., :-1]
                source = f"{label_mosaic.path} (rows {top}-{top + tile - 1})"
                band_mask = binarize_label(band_label[:, : columns * tile], source, threshold)
                changed += int(np.count_nonzero(band_mask))
                for column in range(columns):
                    window = slice(column * tile, (column + 1) * tile)
                    name = tile_name(top, column * tile)
                    files = {kind: staging / "images" / kind / f"{name}.png" for kind in ("t1", "t2", "label")}
                    write_png_atomic(files["t1"], band_t1[:, window])
                    write_png_atomic(files["t2"], band_t2[:, window])
                    write_png_atomic(files["label"], band_mask[:, window])
                    sample_dir = staging / splits[name]
                    write_sample(sample_dir / f"{name}.json", sample_dir, img1=files["t1"], img2=files["t2"],
                                 mask=files["label"], question=question, answer=PLAIN_ANSWER, kind="explicit",
                                 croi="building", direction="increase", pair_id=name, heldout=False)
    return {
        "pairs": {name: list(splits.values()).count(name) for name in SPLITS},
        "change_fraction": changed / (len(names) * tile * tile),
        "tiles": f"{rows} rows x {columns} columns of {tile} px",
        "dropped": f"{width - columns * tile} px at the right, {height - rows * tile} px at the bottom",
        "decoded whole": ", ".join(str(m.path) for m in (t1_mosaic, t2_mosaic, label_mosaic) if not m.windowed)
        or "none (all read in windows)",
    }


# --------------------------------------------------------------------------------------------------------- folder


def _subfolders(folder: Path) -> dict[str, Path]:
    """Subfolders by lower-case name; two names differing only in case would make the layout ambiguous."""
    found: dict[str, Path] = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir():
            if child.name.lower() in found:
                raise PrepareError(f"{folder}: both {found[child.name.lower()].name}/ and {child.name}/ exist")
            found[child.name.lower()] = child
    return found


def find_layout(root: Path) -> list[tuple[str | None, Path, Path, Path]]:
    """(split, T1 folder, T2 folder, label folder) for ROOT or, when present, each of ROOT/{train,val,test}."""
    if not root.is_dir():
        raise PrepareError(f"{root}: no such folder")
    children = _subfolders(root)
    bases = [(split, children[split]) for split in SPLITS if split in children] or [(None, root)]
    layouts = []
    for split, base in bases:
        folders = _subfolders(base)
        pairs = [(folders[a], folders[b]) for a, b in IMAGE_FOLDER_PAIRS if a in folders and b in folders]
        labels = [folders[name] for name in LABEL_FOLDERS if name in folders]
        if len(pairs) != 1 or len(labels) != 1:
            found = ", ".join(sorted(folder.name for folder in folders.values())) or "none"
            raise PrepareError(
                f"{base}: expected one image folder pair ({', '.join(f'{a}/{b}' for a, b in IMAGE_FOLDER_PAIRS)})"
                f" and one label folder ({', '.join(LABEL_FOLDERS)}); found {found}"
            )
        layouts.append((split, *pairs[0], labels[0]))
    return layouts


def prepare_folder(
    root,
    question: str,
    output_dir,
    answer: str = PLAIN_ANSWER,
    seed: int = 0,
    threshold: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Index a data set in a standard change-detection layout (see `find_layout`) as samples asking `question`.

    Pairs match by file name without extension. The images stay where they are and are referenced by relative
    path; labels (0/1, 0/255 or binary colour) are re-written as 0/255 PNG under OUT/masks/<split>/. A pair whose
    label has change gets `answer`; one with an empty label gets a no-change sentence without [SEG] and
    `kind: "absent"`. Existing train/val/test folders are kept as the split, otherwise a seeded 8:1:1 split is
    made. Returns the summary.
    """
    output = OutputDir(output_dir, "prepare_data.py folder", inputs=[root], overwrite=overwrite)
    root, output_dir = Path(root).resolve(), output.path
    pairs = []  # (split or None, stem, t1, t2, label)
    unmatched, unreadable, mismatched = [], [], []
    for split, t1_dir, t2_dir, label_dir in find_layout(root):
        listings = {folder: images_by_stem(folder) for folder in (t1_dir, t2_dir, label_dir)}
        for stem in sorted(set().union(*listings.values())):
            missing = [folder for folder, files in listings.items() if stem not in files]
            if missing:
                unmatched.append(f"{stem}: not in {', '.join(relative_path(folder, root) + '/' for folder in missing)}")
                continue
            files = [listings[folder][stem] for folder in (t1_dir, t2_dir, label_dir)]
            try:
                sizes = [image_size(path) for path in files]
            except ImageReadError as error:
                unreadable.append(str(error))
                continue
            mismatch = size_mismatch({relative_path(path, root): size for path, size in zip(files, sizes)})
            if mismatch:
                mismatched.append(f"{stem}: {mismatch}")
            pairs.append((split, stem, *files))
    if unmatched:
        raise _problems(f"{root}: {len(unmatched)} file names have no partner:", unmatched)
    if unreadable:
        raise _problems(f"{root}: {len(unreadable)} files cannot be read:", unreadable)
    if mismatched:
        raise _problems(f"{root}: {len(mismatched)} pairs differ in size (height x width):", mismatched)
    if not pairs:
        raise PrepareError(f"{root}: no image pairs found")

    made_splits = split_pairs([stem for split, stem, *_ in pairs if split is None], seed)
    counts = dict.fromkeys(SPLITS, 0)
    changed = total = absent = 0
    non_binary = []
    with output.staged() as staging:
        for split, stem, t1, t2, label in tqdm(pairs, desc="folder", unit="pair"):
            try:
                mask = read_mask(label, threshold)
            except ImageReadError as error:
                non_binary.append(str(error))
                continue
            split = split or made_splits[stem]
            mask_file = staging / "masks" / split / f"{stem}.png"
            write_png_atomic(mask_file, mask)
            has_change = bool(mask.any())
            sample_dir = output_dir / split  # the final place, which the relative paths must resolve from
            write_sample(staging / split / f"{stem}.json", sample_dir, img1=t1, img2=t2,
                         mask=output_dir / "masks" / split / f"{stem}.png", question=question,
                         answer=answer if has_change else ABSENT_ANSWER, kind="explicit" if has_change else "absent",
                         pair_id=stem, heldout=False)
            counts[split] += 1
            changed += int(np.count_nonzero(mask))
            total += mask.size
            absent += not has_change
        if non_binary:
            raise _problems(f"{len(non_binary)} labels cannot be used:", non_binary)
    return {
        "pairs": counts,
        "change_fraction": changed / total,
        "absent": absent,
        "split": f"8:1:1, seed {seed}" if made_splits else "from the train/val/test folders",
    }


# ---------------------------------------------------------------------------------------- prepare_data.py commands


def _add_threshold(parser) -> None:
    parser.add_argument("--threshold", type=int,
                        help="binarise non-binary labels with `> THRESHOLD` instead of failing")


def _bcdd_arguments(parser) -> None:
    parser.add_argument("--t1", required=True, type=Path, help="earlier mosaic (TIFF/GeoTIFF, PNG, ...)")
    parser.add_argument("--t2", required=True, type=Path, help="later mosaic, same size")
    parser.add_argument("--label", required=True, type=Path, help="change label mosaic (0/1, 0/255 or binary colour)")
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--tile", type=int, default=256, help="tile side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 8:1:1 split (default 0)")
    parser.add_argument("--question", default="Building", help='question of every sample (default "Building")')
    _add_threshold(parser)
    add_overwrite(parser)


def _folder_arguments(parser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="data set folder, optionally with train/val/test")
    parser.add_argument("--question", required=True, help='question of every sample, e.g. "Building"')
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--answer", default=PLAIN_ANSWER, help=f'answer where the label has change ("{PLAIN_ANSWER}")')
    parser.add_argument("--seed", type=int, default=0, help="seed of the 8:1:1 split without split folders")
    _add_threshold(parser)
    add_overwrite(parser)


BCDD = Subcommand(
    "bcdd", "cut the BCDD (WHU building CD) mosaics into tiles", _bcdd_arguments,
    lambda args: prepare_bcdd(args.t1, args.t2, args.label, args.output_dir, args.tile, args.seed, args.question,
                              args.threshold, args.overwrite))
FOLDER = Subcommand(
    "folder", "index a data set in an A/B/label-style folder layout", _folder_arguments,
    lambda args: prepare_folder(args.root, args.question, args.output_dir, args.answer, args.seed, args.threshold,
                                args.overwrite))
