"""Samples as training data: a `datasets.Dataset` with one row per image pair, and the collator that decodes a batch
and builds the model's inputs with the processor."""

from pathlib import Path

import datasets
import numpy as np
import torch

from reasoncd.data.augment import draw_transform, transform_view
from reasoncd.data.images import read_mask
from reasoncd.data.questions import asked_units
from reasoncd.data.samples import SampleError, group_by_pair, load_images, load_mask, load_target_masks
from reasoncd.data.second import (holds_in_both_orders, land_cover_label_paths, read_land_cover,
                                  swapped_order_truth_path)
from reasoncd.training.feature_cache import image_keys


def as_dataset(samples: list[dict]) -> datasets.Dataset:
    """
    A `datasets.Dataset` with one row per image pair (paths and texts only; the collator decodes images lazily,
    batch by batch). Batch sizes therefore count pairs; all questions about a pair travel together.
    """
    groups = group_by_pair(samples)
    columns = ("img1_path", "img2_path", "pair_id", "questions", "answers", "mask_paths", "target_mask_paths")
    table = {key: [g[key] for g in groups] for key in columns}
    # Per question, in the order group_by_pair lists each pair's questions: the units it asks about, the mask file
    # of its truth with the dates swapped ("" where it has none), and whether it holds in both orders.
    per_pair: dict[tuple[str, str], dict[str, list]] = {}
    extra_columns = ("asked_units", "order_mask_paths", "holds_in_both_orders")
    for sample in samples:
        pair = per_pair.setdefault((sample["img1_path"], sample["img2_path"]), {column: [] for column in extra_columns})
        pair["asked_units"].append(asked_units(sample))
        swapped = swapped_order_truth_path(sample)
        pair["order_mask_paths"].append("" if swapped is None else str(swapped))
        pair["holds_in_both_orders"].append(holds_in_both_orders(sample))
    for column in extra_columns:
        table[column] = [per_pair[(g["img1_path"], g["img2_path"])][column] for g in groups]
    return datasets.Dataset.from_dict(table)


def _as_samples(item: dict) -> list[dict]:
    """A dataset row (a pair with its questions) or a single sample, as a list of samples."""
    if "questions" not in item:
        return [item]
    return [{"img1_path": item["img1_path"], "img2_path": item["img2_path"], "mask_path": mask,
             "question": question, "answer": answer,
             "targets": [{"present": True, "mask_path": path} for path in targets], "asked_units": units,
             "order_mask_path": swapped or None, "holds_in_both_orders": symmetric}
            for question, answer, mask, targets, units, swapped, symmetric in zip(
                item["questions"], item["answers"], item["mask_paths"], item["target_mask_paths"],
                item["asked_units"], item["order_mask_paths"], item["holds_in_both_orders"])]


class ReasonCDCollator:
    """Decodes a batch of samples and builds model inputs with the processor (labels: answer tokens only). A question
    about several changes gets one mask per `[SEG]` of its answer, any other question its one mask. With
    `augmentation` (`reasoncd.data.augment.AUGMENTATIONS`), each pair is turned or mirrored by a transform drawn for
    it, its images and all its questions' masks alike (training batches only: `evaluation` is this collator without
    it). With `land_cover_classes` (`ReasonCDConfig.land_cover_classes`), each pair's per-date land-cover labels too,
    where its images sit in a SECOND layout with ``label1``/``label2`` beside them."""

    def __init__(self, processor, *, cache_keys: bool = False, croi_units: tuple[str, ...] = (),
                 augmentation: str = "none", order_truths: bool = False, land_cover_classes: tuple[str, ...] = ()):
        self.processor = processor
        self.land_cover_classes = tuple(land_cover_classes)
        self.augmentation = augmentation
        self.order_truths = order_truths  # the model learns the order of the dates: each row's truth, dates swapped
        self.cache_keys = cache_keys  # content keys for the frozen-feature cache, hashed here on the CPU
        self.croi_units = tuple(croi_units)  # the model's CRoI head labels (`ReasonCDConfig.croi_units`), if any

    def _croi_targets(self, samples: list[dict]) -> torch.Tensor:
        """`(B, U)`: 1 for each unit a question asks about, 0 for the others; a row of -1 where the sample says
        nothing about its CRoI (the loss skips it)."""
        targets = torch.zeros(len(samples), len(self.croi_units))
        for row, sample in enumerate(samples):
            units = sample["asked_units"] if "asked_units" in sample else asked_units(sample)
            unknown = [unit for unit in units if unit not in self.croi_units]
            if unknown:
                raise ValueError(f"{sample.get('source', sample['img1_path'])}: CRoI {unknown[0]!r} is not one of "
                                 f"the model's croi_units {self.croi_units}")
            if not units:
                targets[row] = -1.0
            for unit in units:
                targets[row, self.croi_units.index(unit)] = 1.0
        return targets

    @staticmethod
    def _order_truth(sample: dict, size: tuple[int, int], transform: int):
        """The sample's truth with T1 and T2 swapped (its opposite direction's mask; empty where that file does not
        exist, as that direction did not change), under the pair's transform; None where it has none."""
        path = sample.get("order_mask_path") if "order_mask_path" in sample else swapped_order_truth_path(sample)
        if not path:
            return None
        truth = read_mask(path) if Path(path).is_file() else np.zeros(size, dtype=bool)
        if truth.shape != tuple(size):
            raise SampleError(f"{path}: mask {truth.shape} does not match the images {tuple(size)}")
        return transform_view(truth, transform) if transform else truth

    def evaluation(self) -> "ReasonCDCollator":
        """The same collator without augmentation, for validation batches."""
        return ReasonCDCollator(self.processor, cache_keys=self.cache_keys, croi_units=self.croi_units,
                                order_truths=self.order_truths, land_cover_classes=self.land_cover_classes)

    def _land_cover(self, sample: dict, size: tuple[int, int], transform: int) -> torch.Tensor:
        """`(2, H, W)` int64: the pair's land cover at T1 and T2 (`read_land_cover`), -100 where it has no labels."""
        paths = land_cover_label_paths(sample)
        if paths is None:
            return torch.full((2, *size), -100, dtype=torch.long)
        labels = []
        for path in paths:
            label = read_land_cover(path, self.land_cover_classes)
            if label.shape != tuple(size):
                raise SampleError(f"{path}: label {label.shape} does not match the images {tuple(size)}")
            labels.append(torch.from_numpy(transform_view(label, transform) if transform else label))
        return torch.stack(labels)

    def __call__(self, batch: list[dict]) -> dict:
        samples = [sample for item in batch for sample in _as_samples(item)]
        pair_of, pairs, transforms, pair_index, masks, order_masks = {}, [], [], [], [], []
        for sample in samples:
            key = (sample["img1_path"], sample["img2_path"])
            if key not in pair_of:  # each pair is decoded (and later encoded) once, however many questions
                pair_of[key] = len(pairs)
                pairs.append(load_images(sample))
                transforms.append(draw_transform(self.augmentation))
            pair = pair_of[key]
            pair_index.append(pair)
            size = pairs[pair][0].shape[:2]
            mask = load_target_masks(sample, size) if sample.get("targets") else load_mask(sample, size)
            if transforms[pair]:
                mask = ([transform_view(m, transforms[pair]) for m in mask] if isinstance(mask, list)
                        else transform_view(mask, transforms[pair]))
            masks.append(mask)
            if self.order_truths:
                order_masks.append(self._order_truth(sample, size, transforms[pair]))
        pairs = [tuple(transform_view(image, t) for image in pair) if t else pair for pair, t in zip(pairs, transforms)]
        inputs = dict(self.processor(
            images_t1=[p[0] for p in pairs],
            images_t2=[p[1] for p in pairs],
            text=[s["question"] for s in samples],
            answers=[s["answer"] for s in samples],
            masks=masks,
            pair_index=pair_index,
            return_tensors="pt",
        ))
        if self.croi_units:
            inputs["croi_targets"] = self._croi_targets(samples)
        if self.land_cover_classes:
            first = {pair: sample for sample, pair in zip(reversed(samples), reversed(pair_index))}
            inputs["land_cover"] = torch.stack([self._land_cover(first[pair], pairs[pair][0].shape[:2], transforms[pair])
                                                for pair in range(len(pairs))])
        if self.order_truths:
            inputs["order_known"] = torch.tensor([truth is not None for truth in order_masks])
            inputs["order_symmetric"] = torch.tensor([
                sample["holds_in_both_orders"] if "holds_in_both_orders" in sample else holds_in_both_orders(sample)
                for sample in samples])
            size = inputs["masks"].shape[-2:]
            inputs["order_masks"] = torch.stack([torch.zeros(size) if truth is None else torch.from_numpy(truth)
                                                 for truth in order_masks]).float()
        if self.cache_keys:
            inputs["cache_keys"] = image_keys(inputs)
        return inputs
