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
from reasoncd.scenes.summary import question_summary
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
                store.save(batch, tiles, skipped, answers.logits, answers.seg_present, answers.texts)
            else:
                store.save(batch, tiles, skipped, None, None, [])
            run_now += len(tiles)
            seconds += time.perf_counter() - start
            bar.update(len(store.tiles_of(batch)))
            if after_batch is not None:
                after_batch(batch)
    return run_now, seconds


def _overlapping(block: Box, boxes: list[Box], processed) -> list[tuple[int, Box]]:
    return [(tile, boxes[tile]) for tile in processed if block.intersection(boxes[tile])]


@dataclass
class Assembled:
    changed: list[int]  # changed pixels per question
    valid_pixels: int  # pixels with data in both dates
    valid_area_m2: float | None  # their ground area (block by block: pixels x the block's central pixel's area)


def _assemble(scene: Scene, store: BatchStore, boxes: list[Box], questions, settings: SceneSettings, work: Path,
              stems: list[str], progress: bool, model_name: str) -> Assembled:
    """Blend the tiles' probabilities block by block into the probability and mask rasters (in `work`)."""
    processed = store.processed_tiles()
    seg = {tile: row for _, record in store.all_meta() for tile, row in zip(record["tiles"], record["seg_present"])}
    changed = [0] * len(questions)
    valid_pixels, valid_area = 0, 0.0
    grid = scene.grid
    ground = GroundArea(grid.crs, float(np.hypot(grid.transform.a, grid.transform.d)))
    tags = [{"question": question, "model": model_name} for question in questions]
    probability_files = [rasters.open_probability(formats.scratch_path(work, stem, "probability"), grid, tag)
                         for stem, tag in zip(stems, tags)]
    mask_files = [rasters.open_mask(formats.scratch_path(work, stem, "mask"), grid, tag)
                  for stem, tag in zip(stems, tags)]
    try:
        blocks = block_boxes(scene.height, scene.width, ASSEMBLY_BLOCK)
        for block in tqdm(blocks, unit="block", desc="blending", disable=not progress, dynamic_ncols=True):
            weight_sum = np.zeros((block.height, block.width))
            probability_sum = np.zeros((len(questions), block.height, block.width))
            for tile, box in _overlapping(block, boxes, processed):
                part = block.intersection(box)
                in_tile = (slice(part.row - box.row, part.row - box.row + part.height),
                           slice(part.col - box.col, part.col - box.col + part.width))
                in_block = (slice(part.row - block.row, part.row - block.row + part.height),
                            slice(part.col - block.col, part.col - block.col + part.width))
                weights = tile_weights(box.height, box.width, settings.overlap)[in_tile]
                weight_sum[in_block] += weights
                for question in range(len(questions)):
                    if seg[tile][question]:  # else the probability is 0 there
                        logits = store.logits(tile, question, *in_tile)
                        probability_sum[question][in_block] += weights * probability_from_logits(logits)
            covered = weight_sum > 0
            valid = scene.valid(block.window()) & covered
            valid_pixels += int(valid.sum())
            if ground.known and valid.any():
                centre = ground.pixel(grid.transform, block.row + block.height // 2, block.col + block.width // 2)
                valid_area += int(valid.sum()) * centre
            for question in range(len(questions)):
                probability = np.divide(probability_sum[question], weight_sum, out=np.zeros_like(weight_sum),
                                        where=covered)
                probability[~valid] = 0.0
                is_change = (probability > settings.threshold) & valid
                changed[question] += int(is_change.sum())
                rasters.write_probability(probability_files[question], block, probability, valid)
                rasters.write_mask(mask_files[question], block, is_change, valid)
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

    stems = question_stems(questions)
    blending_started = time.perf_counter()
    assembled = _assemble(scene, store, boxes, questions, settings, work, stems, progress, str(describe.get("model")))
    writing_started = time.perf_counter()
    records = [record for _, record in store.all_meta()]
    summaries = []
    for question, (text, stem, files) in enumerate(zip(questions, stems, output_files(questions, settings.formats))):
        for kind in formats.RASTERS:
            rasters.to_cog(formats.scratch_path(work, stem, kind), outputs / files[kind], kind)
        layer, scratch = formats.layer_name(stem), formats.scratch_path(work, stem, "polygons")
        scratch.unlink(missing_ok=True)  # left by an interrupted run: GDAL creates the file itself
        found = polygon_output.write_polygons(formats.scratch_path(work, stem, "mask"),
                                              formats.scratch_path(work, stem, "probability"), scratch, layer)
        for name in settings.formats:
            formats.copy_polygons(scratch, outputs / files[name], formats.POLYGON_FORMATS[name], layer)
        texts = [row[question] for record in records for row in record["texts"]]
        seg_present = [row[question] for record in records for row in record["seg_present"]]
        summaries.append(question_summary(text, files, texts, seg_present, assembled.changed[question], found))
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
