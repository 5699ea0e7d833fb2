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
    holds no [SEG]: the change is absent; an answer about several changes: the highest of its targets' logits, so
    that its mask is their union), whether each answer points at a mask (n, q), and the answers' texts. Per target
    (K: the most [SEG] any answer holds): its logits (n, q, K, H, W), -inf where an answer has fewer, and its label
    (`labels[tile][question]`, one per target)."""

    logits: np.ndarray
    seg_present: np.ndarray
    texts: list[list[str]]
    target_logits: np.ndarray
    labels: list[list[list[str]]]


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
    present = outputs.target_present.cpu().numpy()
    target_logits = np.full((pairs, count, present.shape[1], height, width), -np.inf, dtype=np.float32)
    for row, k in zip(*present.nonzero()):
        full = upscale_mask_logits(outputs.target_masks[row, k].float(), outputs.reshaped_sizes[row],
                                   (height, width), processor.sam_image_size)
        target_logits[row // count, row % count, k] = full.cpu().numpy()
    seg_present = outputs.seg_present.cpu().numpy().reshape(pairs, count)
    texts = [[results[p * count + q]["text"] for q in range(count)] for p in range(pairs)]
    labels = [[[target["label"] for target in results[p * count + q]["targets"]] for q in range(count)]
              for p in range(pairs)]
    return TileAnswers(target_logits.max(axis=2), seg_present, texts, target_logits, labels)
