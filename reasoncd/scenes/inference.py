"""A batch of tile pairs through the model, every question at once.

The processor's `pair_index` path: each tile pair is encoded once for all questions, and the prompt up to the
question is prefilled once per pair (`generate`'s shared prefix), as for several questions about one image pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TileAnswers:
    """For n tiles and q questions: mask logits at the tiles' size (n, q, H, W) float32 (-inf where the answer
    holds no [SEG]: the change is absent), whether each answer points at a mask (n, q), and the answers' texts."""

    logits: np.ndarray
    seg_present: np.ndarray
    texts: list[list[str]]


def answer_tiles(model, processor, tiles_t1: list[np.ndarray], tiles_t2: list[np.ndarray], questions: list[str],
                 max_new_tokens: int = 64) -> TileAnswers:
    from modeling_reasoncd import upscale_mask_logits
    from reasoncd.loading import with_readable_text

    pairs, count = len(tiles_t1), len(questions)
    inputs = processor(images_t1=tiles_t1, images_t2=tiles_t2, text=[q for _ in range(pairs) for q in questions],
                       pair_index=[p for p in range(pairs) for _ in range(count)], return_tensors="pt")
    inputs = inputs.to(model.device)
    with torch.no_grad():
        outputs = model.generate(**inputs, max_new_tokens=max_new_tokens)
    results = [with_readable_text(r) for r in processor.post_process_generation(outputs)]
    height, width = tiles_t1[0].shape[:2]
    logits = np.full((pairs, count, height, width), -np.inf, dtype=np.float32)
    seg_present = outputs.seg_present.cpu().numpy().reshape(pairs, count)
    for row in range(pairs * count):
        if seg_present.flat[row]:
            full = upscale_mask_logits(outputs.pred_masks[row].float(), outputs.reshaped_sizes[row],
                                       (height, width), processor.sam_image_size)
            logits[row // count, row % count] = full.cpu().numpy()
    texts = [[results[p * count + q]["text"] for q in range(count)] for p in range(pairs)]
    return TileAnswers(logits, seg_present, texts)
