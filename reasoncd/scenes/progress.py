"""Per-batch tile results on disk: what lets an interrupted scene run resume without redoing finished tiles.

The tiles are cut into fixed batches (batch k: tiles k*B .. k*B+B-1 of the scene's tile list), decided by the run's
settings alone. A finished batch leaves `batch-K.npy` (its tiles' mask logits, (n, q, H, W) float32), where an answer
held several targets `batch-K.targets.npy` (each target's, (n, q, K, H, W)), and then `batch-K.json` (which tiles,
which were skipped as nodata, the answers and their targets' labels); the JSON, written last and atomically, marks
the batch done. A resumed run skips done batches and recomputes a half-written one whole, so every batch
goes through the model with the same tiles as in an uninterrupted run, and the outputs, made from these files at
the end, are the same.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reasoncd.io import atomic_path, write_json_atomic


class BatchStore:
    def __init__(self, folder: Path, tile_count: int, batch_size: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tile_count, self.batch_size = tile_count, batch_size
        self.batch_count = -(-tile_count // batch_size)
        self._where: dict[int, tuple[int, int]] | None = None  # tile -> (batch, position), once all are done

    def tiles_of(self, batch: int) -> range:
        return range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.tile_count))

    def _json(self, batch: int) -> Path:
        return self.folder / f"batch-{batch:06d}.json"

    def _npy(self, batch: int) -> Path:
        return self.folder / f"batch-{batch:06d}.npy"

    def _targets_npy(self, batch: int) -> Path:
        return self.folder / f"batch-{batch:06d}.targets.npy"

    def done(self, batch: int) -> bool:
        return self._json(batch).is_file()

    def save(self, batch: int, tiles: list[int], skipped: list[int], answers=None) -> None:
        """A batch's `TileAnswers` (None when every tile was skipped)."""
        if tiles:
            with atomic_path(self._npy(batch)) as temporary:
                np.save(temporary, answers.logits)
            if answers.target_logits.shape[2] > 1:  # with one target per answer, its logits are the answer's
                with atomic_path(self._targets_npy(batch)) as temporary:
                    np.save(temporary, answers.target_logits)
        write_json_atomic(self._json(batch), {
            "tiles": tiles, "skipped_nodata": skipped,
            "seg_present": [] if answers is None else answers.seg_present.astype(bool).tolist(),
            "texts": [] if answers is None else answers.texts, "labels": [] if answers is None else answers.labels})

    def meta(self, batch: int) -> dict:
        return json.loads(self._json(batch).read_text(encoding="utf-8"))

    def all_meta(self):
        """(batch, its record) for every batch, in order."""
        return ((batch, self.meta(batch)) for batch in range(self.batch_count))

    def processed_tiles(self) -> dict[int, tuple[int, int]]:
        """tile -> (batch, position in the batch's array) for every tile that went through the model."""
        if self._where is None:
            self._where = {tile: (batch, position) for batch, record in self.all_meta()
                           for position, tile in enumerate(record["tiles"])}
        return self._where

    def logits(self, tile: int, question: int, rows: slice, cols: slice, target: int | None = None) -> np.ndarray:
        """A piece of one tile's logits for one question, or for its answer's target `target` (read through a
        short-lived map: only that piece is loaded, and nothing stays mapped)."""
        batch, position = self.processed_tiles()[tile]
        if target is not None and self._targets_npy(batch).is_file():
            array = np.load(self._targets_npy(batch), mmap_mode="r")
            piece = np.array(array[position, question, target, rows, cols])
        else:  # the answer's logits are its one target's
            array = np.load(self._npy(batch), mmap_mode="r")
            piece = np.array(array[position, question, rows, cols])
        del array
        return piece
