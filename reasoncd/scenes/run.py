"""A whole scene through the model: tiles in batches (kept on disk as they finish), then the outputs, block by block.

Memory does not grow with the scene: tiles are read as windows, their results go to disk per batch, and the blended
probabilities are made one output block at a time from the tiles that cover it.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from reasoncd.io import write_json_atomic
from reasoncd.scenes import polygons as polygon_output
from reasoncd.scenes import formats, rasters
from reasoncd.scenes.areas import GroundArea
from reasoncd.scenes.inference import answer_tiles
from reasoncd.scenes.progress import BatchStore
from reasoncd.scenes.reading import Scene
from reasoncd.scenes.summary import question_summary, target_summary
from reasoncd.scenes.tiling import Box, block_boxes, check_tiling, probability_from_logits, tile_boxes, tile_weights

ASSEMBLY_BLOCK = 512  # side of the output blocks blended at once
SUMMARY = "summary.json"


@dataclass(frozen=True, kw_only=True)
class SceneSettings:
    tile_size: int = 256
    overlap: int = 32
    batch_size: int = 8
    threshold: float = 0.5
    max_new_tokens: int = 64
    formats: tuple[str, ...] = formats.DEFAULT_FORMATS  # polygon formats (formats.POLYGON_FORMATS)

    def check(self) -> None:
        check_tiling(self.tile_size, self.overlap)
        if self.batch_size < 1:
            raise ValueError(f"--batch_size {self.batch_size}: give at least 1 tile per batch")
        if not 0 < self.threshold < 1:
            raise ValueError(f"--threshold {self.threshold}: give a probability between 0 and 1 (exclusive)")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens {self.max_new_tokens}: give at least 1")
        formats.parse_formats(",".join(self.formats))

    def tile_signature(self) -> dict:
        """The settings that decide the tiles' results (what a resumed run must share with the interrupted one)."""
        return {k: v for k, v in asdict(self).items() if k in ("tile_size", "overlap", "batch_size", "max_new_tokens")}


def question_stems(questions: list[str]) -> list[str]:
    """File-name stems per question: q1_new-buildings, q2_..."""
    stems = []
    for number, question in enumerate(questions, 1):
        slug = re.sub(r"[^a-z0-9]+", "-", question.lower()).strip("-")[:40].strip("-") or "question"
        stems.append(f"q{number}_{slug}")
    return stems


def output_files(questions: list[str], polygon_formats) -> list[dict]:
    """Per question: {kind: file name} of what the run writes."""
    return [formats.question_files(stem, polygon_formats) for stem in question_stems(questions)]


def output_names(questions: list[str], polygon_formats) -> list[str]:
    return [SUMMARY] + [name for files in output_files(questions, polygon_formats) for name in files.values()]


@dataclass
class RunStats:
    tiles: int
    tiles_run_now: int  # tiles that went through the model in this run (not resumed, not skipped)
    inference_seconds: float  # reading the tiles and the model
    blending_seconds: float
    writing_seconds: float  # Cloud-Optimized GeoTIFFs, polygons, summary
    total_seconds: float


def _run_tiles(model, processor, scene: Scene, questions, store: BatchStore, boxes: list[Box],
               settings: SceneSettings, progress: bool, after_batch) -> tuple[int, float]:
    finished = sum(len(store.tiles_of(b)) for b in range(store.batch_count) if store.done(b))
    run_now, seconds = 0, 0.0
    with tqdm(total=len(boxes), initial=finished, unit="tile", desc="tiles", disable=not progress,
              dynamic_ncols=True) as bar:
        for batch in range(store.batch_count):
            if store.done(batch):
                continue
            start = time.perf_counter()
            tiles, skipped, images_t1, images_t2 = [], [], [], []
            for tile in store.tiles_of(batch):
                image_t1, image_t2, valid = scene.read(boxes[tile].window())
                if not valid.any():
                    skipped.append(tile)
                    continue
                tiles.append(tile)
                images_t1.append(image_t1)
                images_t2.append(image_t2)
            if tiles:
                answers = answer_tiles(model, processor, images_t1, images_t2, questions, settings.max_new_tokens)
                store.save(batch, tiles, skipped, answers)
            else:
                store.save(batch, tiles, skipped)
            run_now += len(tiles)
            seconds += time.perf_counter() - start
            bar.update(len(store.tiles_of(batch)))
            if after_batch is not None:
                after_batch(batch)
    return run_now, seconds


def _overlapping(block: Box, boxes: list[Box], processed) -> list[tuple[int, Box]]:
    return [(tile, boxes[tile]) for tile in processed if block.intersection(boxes[tile])]


@dataclass(frozen=True)
class Layer:
    """One map the run writes: a question's (its answers' union), or one target's of a question whose answers name
    several (`label`: the words naming it)."""

    question: int
    stem: str
    label: str | None = None


def scene_targets(records: list[dict], question: int) -> list[str]:
    """The targets a question's answers name over the scene, in the order the tiles first name them; none when
    they name fewer than two (the question's own map is then its one target's)."""
    labels = dict.fromkeys(label for record in records for row in record.get("labels", [])
                           for label in row[question])
    return list(labels) if len(labels) > 1 else []


def _layers(questions: list[str], stems: list[str], records: list[dict]) -> list[Layer]:
    layers = [Layer(question, stem) for question, stem in enumerate(stems)]
    for question, stem in enumerate(stems):
        layers += [Layer(question, f"{stem}_target{k}", label)
                   for k, label in enumerate(scene_targets(records, question), 1)]
    return layers


@dataclass
class Assembled:
    changed: list[int]  # changed pixels per layer
    valid_pixels: int  # pixels with data in both dates
    valid_area_m2: float | None  # their ground area (block by block: pixels x the block's central pixel's area)


def _tile_logits(store: BatchStore, labels: dict, seg: dict, tile: int, layer: Layer, in_tile) -> np.ndarray | None:
    """A tile's logits for a layer over `in_tile`; None where its answer has no such mask (probability 0)."""
    if layer.label is None:
        return store.logits(tile, layer.question, *in_tile) if seg[tile][layer.question] else None
    named = labels.get(tile, [[]] * (layer.question + 1))[layer.question]
    if layer.label not in named:
        return None
    return store.logits(tile, layer.question, *in_tile, target=named.index(layer.label))


def _assemble(scene: Scene, store: BatchStore, boxes: list[Box], questions, settings: SceneSettings, work: Path,
              layers: list[Layer], progress: bool, model_name: str) -> Assembled:
    """Blend the tiles' probabilities block by block into each layer's probability and mask rasters (in `work`)."""
    processed = store.processed_tiles()
    seg = {tile: row for _, record in store.all_meta() for tile, row in zip(record["tiles"], record["seg_present"])}
    labels = {tile: row for _, record in store.all_meta()
              for tile, row in zip(record["tiles"], record.get("labels", []))}
    changed = [0] * len(layers)
    valid_pixels, valid_area = 0, 0.0
    grid = scene.grid
    ground = GroundArea(grid.crs, float(np.hypot(grid.transform.a, grid.transform.d)))
    tags = [{"question": questions[layer.question], "model": model_name,
             **({"target": layer.label} if layer.label is not None else {})} for layer in layers]
    probability_files = [rasters.open_probability(formats.scratch_path(work, layer.stem, "probability"), grid, tag)
                         for layer, tag in zip(layers, tags)]
    mask_files = [rasters.open_mask(formats.scratch_path(work, layer.stem, "mask"), grid, tag)
                  for layer, tag in zip(layers, tags)]
    try:
        blocks = block_boxes(scene.height, scene.width, ASSEMBLY_BLOCK)
        for block in tqdm(blocks, unit="block", desc="blending", disable=not progress, dynamic_ncols=True):
            weight_sum = np.zeros((block.height, block.width))
            probability_sum = np.zeros((len(layers), block.height, block.width))
            for tile, box in _overlapping(block, boxes, processed):
                part = block.intersection(box)
                in_tile = (slice(part.row - box.row, part.row - box.row + part.height),
                           slice(part.col - box.col, part.col - box.col + part.width))
                in_block = (slice(part.row - block.row, part.row - block.row + part.height),
                            slice(part.col - block.col, part.col - block.col + part.width))
                weights = tile_weights(box.height, box.width, settings.overlap)[in_tile]
                weight_sum[in_block] += weights
                for index, layer in enumerate(layers):
                    logits = _tile_logits(store, labels, seg, tile, layer, in_tile)
                    if logits is not None:  # else the probability is 0 there
                        probability_sum[index][in_block] += weights * probability_from_logits(logits)
            covered = weight_sum > 0
            valid = scene.valid(block.window()) & covered
            valid_pixels += int(valid.sum())
            if ground.known and valid.any():
                centre = ground.pixel(grid.transform, block.row + block.height // 2, block.col + block.width // 2)
                valid_area += int(valid.sum()) * centre
            for index in range(len(layers)):
                probability = np.divide(probability_sum[index], weight_sum, out=np.zeros_like(weight_sum),
                                        where=covered)
                probability[~valid] = 0.0
                is_change = (probability > settings.threshold) & valid
                changed[index] += int(is_change.sum())
                rasters.write_probability(probability_files[index], block, probability, valid)
                rasters.write_mask(mask_files[index], block, is_change, valid)
    finally:
        for dataset in probability_files + mask_files:
            dataset.close()
    return Assembled(changed, valid_pixels, round(valid_area, 3) if ground.known else None)


def _scene_record(scene: Scene, assembled: Assembled) -> dict:
    """The scene's grid, bounds (its CRS's and WGS 84's) and analysed area, for the summary."""
    from rasterio.warp import transform_bounds

    from reasoncd.scenes.polygons import vector_transform

    grid = scene.grid
    transform = vector_transform(grid)
    xs, ys = zip(*(transform @ corner for corner in ((0, 0), (grid.width, 0), (0, grid.height),
                                                     (grid.width, grid.height))))
    bounds = [min(xs), min(ys), max(xs), max(ys)]
    ground = GroundArea(grid.crs, 1.0)
    return {"width": scene.width, "height": scene.height,
            "crs": grid.crs.to_string() if grid.crs else None,
            "pixel_size": [abs(grid.transform.a), abs(grid.transform.e)],
            "pixel_area_m2": ground.pixel(grid.transform, grid.height / 2, grid.width / 2) if ground.known else None,
            "bounds": bounds,
            "bounds_wgs84": [round(v, 8) for v in transform_bounds(grid.crs, "EPSG:4326", *bounds, densify_pts=21)]
            if grid.crs else None,
            "valid_pixels": assembled.valid_pixels, "valid_area_m2": assembled.valid_area_m2,
            "notes": scene.notes}


def run_scene(model, processor, scene: Scene, questions: list[str], work: Path, outputs: Path,
              settings: SceneSettings, describe: dict, progress: bool = True, after_batch=None) -> tuple[dict, RunStats]:
    """Run every tile not already done in `work`, then write the outputs into `outputs`; returns the summary (also
    written as summary.json) and the run's timing. `describe` goes into the summary as it is (inputs, model)."""
    settings.check()
    started = time.perf_counter()
    boxes = tile_boxes(scene.height, scene.width, settings.tile_size, settings.overlap)
    store = BatchStore(work / "tiles", len(boxes), settings.batch_size)
    run_now, seconds = _run_tiles(model, processor, scene, questions, store, boxes, settings, progress, after_batch)

    records = [record for _, record in store.all_meta()]
    layers = _layers(questions, question_stems(questions), records)
    blending_started = time.perf_counter()
    assembled = _assemble(scene, store, boxes, questions, settings, work, layers, progress, str(describe.get("model")))
    writing_started = time.perf_counter()
    found = {}
    for index, layer in enumerate(layers):
        files = formats.question_files(layer.stem, settings.formats)
        for kind in formats.RASTERS:
            rasters.to_cog(formats.scratch_path(work, layer.stem, kind), outputs / files[kind], kind)
        name, scratch = formats.layer_name(layer.stem), formats.scratch_path(work, layer.stem, "polygons")
        scratch.unlink(missing_ok=True)  # left by an interrupted run: GDAL creates the file itself
        polygons = polygon_output.write_polygons(formats.scratch_path(work, layer.stem, "mask"),
                                                 formats.scratch_path(work, layer.stem, "probability"), scratch,
                                                 name, target=layer.label)
        for kind in settings.formats:
            formats.copy_polygons(scratch, outputs / files[kind], formats.POLYGON_FORMATS[kind], name)
        found[layer] = (files, assembled.changed[index], polygons)
    summaries = []
    for question, text in enumerate(questions):
        texts = [row[question] for record in records for row in record["texts"]]
        seg_present = [row[question] for record in records for row in record["seg_present"]]
        own, *targets = [layer for layer in layers if layer.question == question]
        tile_labels = [row[question] for record in records for row in record.get("labels", [])]
        files, changed, polygons = found[own]
        summary = question_summary(text, files, texts, seg_present, changed, polygons)
        summary["targets"] = []
        for layer in targets:
            files, changed, polygons = found[layer]
            tiles = sum(layer.label in named for named in tile_labels)
            summary["targets"].append(target_summary(layer.label, files, tiles, changed, polygons))
        summaries.append(summary)
    summary = {
        **describe,
        "scene": _scene_record(scene, assembled),
        "tiles": {"size": settings.tile_size, "overlap": settings.overlap, "total": len(boxes),
                  "with_data": len(store.processed_tiles()),
                  "skipped_nodata": sum(len(r["skipped_nodata"]) for r in records)},
        "threshold": settings.threshold,
        "questions": summaries,
    }
    write_json_atomic(outputs / SUMMARY, summary)
    finished = time.perf_counter()
    stats = RunStats(len(boxes), run_now, seconds, writing_started - blending_started, finished - writing_started,
                     finished - started)
    return summary, stats
