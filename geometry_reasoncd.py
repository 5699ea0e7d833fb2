"""ReasonCD mask geometry: between SAM's square frame and an input image's own size.

Both the model (the mask losses) and the processor (SAM preprocessing, post-processing) use it; it lives in its own
remote-code file so that neither of them imports the other, and loading the processor needs only torch.
"""

import torch
import torch.nn.functional as F


def sam_resized_shape(height: int, width: int, longest_side: int) -> tuple[int, int]:
    """segment-anything's `ResizeLongestSide.get_preprocess_shape`."""
    scale = longest_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def upscale_mask_logits(low_res: torch.Tensor, reshaped_size, target_size, frame: int) -> torch.Tensor:
    """Low-res logits `(..., h, w)` -> SAM's padded `frame` -> un-padded to `reshaped_size` -> `target_size`
    `(..., H, W)`."""
    rh, rw = (int(v) for v in reshaped_size)
    maps = low_res.reshape(1, -1, *low_res.shape[-2:])
    full = F.interpolate(maps, size=(frame, frame), mode="bilinear", align_corners=False)
    full = full[..., :rh, :rw]
    target = tuple(int(v) for v in target_size)
    return F.interpolate(full, size=target, mode="bilinear", align_corners=False).reshape(*low_res.shape[:-2], *target)
