"""Tiny models for the export, handler and app tests: ones whose answers hold `[SEG]`, so masks are really decoded."""

import numpy as np
import torch

from build_reasoncd import build_tiny


def force_seg_answers(model) -> None:
    """
    Makes greedy decoding answer `[SEG]` at every step of a `tiny` model.

    Residual component 0 becomes a constant +50: every token embedding and projected image token carries it, and
    no attention or MLP output writes to it. The final RMSNorm keeps its sign, and the output layer reads that
    component only for `[SEG]`, whose logit is then the only positive one.
    """
    language_model = model.language_model
    with torch.no_grad():
        language_model.get_input_embeddings().weight[:, 0] = 50.0
        model.multi_modal_projector.weight[0] = 0.0
        model.multi_modal_projector.bias[0] = 50.0
        for layer in language_model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        head = language_model.get_output_embeddings().weight
        head.zero_()
        head[model.config.seg_token_id, 0] = 1.0


def seg_tiny(seed: int = 0):
    model, processor = build_tiny(seed)
    force_seg_answers(model)
    return model.eval(), processor


def image_pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two smooth random RGB images, the second with a bright block (a 'change')."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3))
    t1 = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width].astype(np.uint8)
    t2 = t1.copy()
    t2[height // 4: height // 2, width // 3: 2 * width // 3] = 250
    return t1, t2
