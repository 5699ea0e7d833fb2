"""A cache of the frozen encoders' outputs (CLIP patch features, SAM embeddings) per image.

CLIP and SAM's image encoder are frozen, so their outputs for an image never change during training; after the
first epoch every image is a cache hit. An entry's key is a hash of the image's preprocessed CLIP and SAM
pixels (so changing the preprocessing changes the key) and the cache is namespaced by a fingerprint of the encoders'
config and weights (so changing an encoder starts a new cache).
"""

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modeling_reasoncd import ReasonCDFrozenFeatures
from reasoncd.io import atomic_path


def image_keys(batch: dict) -> list[str]:
    """One content key per image of a processor batch, in the order T1 of every pair, then T2 of every pair."""
    keys = []
    for clip_name, sam_name in (("pixel_values_t1", "sam_pixel_values_t1"), ("pixel_values_t2", "sam_pixel_values_t2")):
        for clip, sam in zip(batch[clip_name], batch[sam_name]):
            digest = hashlib.sha1(clip.contiguous().numpy().tobytes())
            digest.update(sam.contiguous().numpy().tobytes())
            keys.append(digest.hexdigest())
    return keys


def encoder_fingerprint(model) -> str:
    """Hash of what determines the frozen features: encoder configs, feature layer and encoder weights."""
    digest = hashlib.sha1()
    digest.update(model.config.vision_config.to_json_string().encode())
    digest.update(model.config.sam_config.to_json_string(use_diff=False).encode())
    digest.update(str(model.config.vision_feature_layer).encode())
    for module in (model.vision_tower, model.sam_image_encoder):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class FrozenFeatureCache:
    """Memory cache with an optional disk layer (`directory/<fingerprint>/<key>.safetensors`)."""

    def __init__(self, model, directory: str | os.PathLike | None = None):
        self.fingerprint = encoder_fingerprint(model)
        self.directory = Path(directory) / self.fingerprint if directory else None
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def _get(self, key: str):
        if key in self._memory:
            return self._memory[key]
        if self.directory and (self.directory / f"{key}.safetensors").is_file():
            tensors = load_file(str(self.directory / f"{key}.safetensors"))
            self._memory[key] = (tensors["vision"], tensors["sam"])
            return self._memory[key]
        return None

    def _put(self, key: str, vision: torch.Tensor, sam: torch.Tensor) -> None:
        entry = (vision.detach().cpu().contiguous(), sam.detach().cpu().contiguous())
        self._memory[key] = entry
        if self.directory:
            target = self.directory / f"{key}.safetensors"
            with atomic_path(target) as temporary:
                save_file({"vision": entry[0], "sam": entry[1]}, str(temporary))

    def frozen_features(self, model, batch: dict, keys: list[str]):
        """The frozen features of a batch's P pairs, in the dtype the model computes in (`model.dtype`: float32, or
        bf16/fp16 under DeepSpeed or a cast); only images never seen before go through the encoders."""
        pairs = batch["pixel_values_t1"].shape[0]
        if len(keys) != 2 * pairs:
            raise ValueError(f"expected {2 * pairs} cache keys for {pairs} pairs, got {len(keys)}")
        entries = [self._get(key) for key in keys]
        missing = [i for i, entry in enumerate(entries) if entry is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            clip = torch.cat([batch["pixel_values_t1"], batch["pixel_values_t2"]])
            sam = torch.cat([batch["sam_pixel_values_t1"], batch["sam_pixel_values_t2"]])
            for index in missing:
                # One image at a time: its features must not depend on the batch that first met it (a resumed run
                # meets it in another), and some kernels round differently with the batch size (the tiny
                # preset's CLIP, 4 tokens per image, does).
                with torch.no_grad():
                    vision, sam_features = model.encode_frozen_images(clip[index : index + 1], sam[index : index + 1])
                self._put(keys[index], vision[0], sam_features[0])
                entries[index] = self._memory[keys[index]]
        device, dtype = batch["pixel_values_t1"].device, model.dtype
        vision = torch.stack([e[0] for e in entries]).to(device=device, dtype=dtype)
        sam = torch.stack([e[1] for e in entries]).to(device=device, dtype=dtype)
        return ReasonCDFrozenFeatures(
            vision_features_t1=vision[:pairs], vision_features_t2=vision[pairs:],
            sam_features_t1=sam[:pairs], sam_features_t2=sam[pairs:],
        )
