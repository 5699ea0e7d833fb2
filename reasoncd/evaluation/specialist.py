"""A specialist baseline without language: what the quickstart's data and time allow a plain network.

A question-conditioned U-Net: T1 and T2 stacked as 6 channels at 128 px; four encoder levels of two 3x3 conv +
BatchNorm + ReLU (32/64/128/128 channels); the change of interest (CRoI) as a learned embedding of class x direction
that scales and shifts (FiLM) every encoder level; a bilinear decoder with skips; a presence logit from the
max-pooled bottleneck and the embedding. BCE + Dice on the masks of present CRoIs, BCE of presence on every question.
It reads the CRoI from the sample's metadata, so it answers every phrasing of a CRoI alike (no language to resolve);
a question about several changes is asked once per change it lists (its `targets`), in training as in scoring.

It is trained for a wall-clock budget (the learning rate follows a one-cycle schedule over the elapsed share of it)
and scored by `reasoncd.evaluation.scoring.score`, the code eval.py uses: its predictions carry a template answer
(present: a plain answer naming the change; absent: an absent sentence), a mask (empty when it decides absent), the
counterfactual mask (another question's CRoI over the same pair) and the map with T1 and T2 swapped.
"""

import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reasoncd.data.images import read_mask
from reasoncd.data.questions import CLASSES, DIRECTIONS, MULTI_KIND, absent_answer, multi_answer, plain_answers
from reasoncd.data.samples import SEG, load_images, load_mask
from reasoncd.data.second import swapped_order_truth_path
from reasoncd.evaluation.scoring import batches_by_pair, pair_key, swap_sources, truth_key

SIDE = 128  # input side: T1 and T2 are resized to it
WIDTHS = (32, 64, 128, 128)
EMBEDDING = 64


def croi_index(sample: dict) -> int:
    """The CRoI of a sample (class x direction) as one index."""
    return CLASSES.index(sample["croi"]) * len(DIRECTIONS) + DIRECTIONS.index(sample["direction"])


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
    )


class SpecialistUNet(nn.Module):
    """The question-conditioned U-Net (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.croi = nn.Embedding(len(CLASSES) * len(DIRECTIONS), EMBEDDING)
        widths = (6,) + WIDTHS
        self.encoder = nn.ModuleList(_block(widths[i], widths[i + 1]) for i in range(len(WIDTHS)))
        self.film = nn.ModuleList(nn.Linear(EMBEDDING, 2 * width) for width in WIDTHS)
        for layer in self.film:  # starts unconditioned: scale 1, shift 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.decoder = nn.ModuleList(_block(WIDTHS[i + 1] + WIDTHS[i], WIDTHS[i]) for i in reversed(range(3)))
        self.head = nn.Conv2d(WIDTHS[0], 1, 1)
        self.presence = nn.Sequential(nn.Linear(WIDTHS[-1] + EMBEDDING, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, pairs: torch.Tensor, croi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`pairs` `(N, 6, SIDE, SIDE)`, `croi` `(N,)`: mask logits `(N, SIDE, SIDE)` and presence logits `(N,)`."""
        embedding = self.croi(croi)
        skips, x = [], pairs
        for level, (block, film) in enumerate(zip(self.encoder, self.film)):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            gamma, beta = film(embedding).chunk(2, dim=-1)
            x = x * (1 + gamma[..., None, None]) + beta[..., None, None]
            skips.append(x)
        presence = self.presence(torch.cat([x.amax(dim=(2, 3)), embedding], dim=-1)).squeeze(-1)
        for block, skip in zip(self.decoder, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)[:, 0], presence


def pair_tensor(t1: np.ndarray, t2: np.ndarray) -> torch.Tensor:
    """Two HxWx3 uint8 images as one `(6, SIDE, SIDE)` tensor in [-1, 1]."""
    stacked = torch.from_numpy(np.concatenate([t1, t2], axis=-1)).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    return F.interpolate(stacked, size=(SIDE, SIDE), mode="bilinear", align_corners=False)[0]


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return F.interpolate(torch.from_numpy(mask).float()[None, None], size=(SIDE, SIDE), mode="area")[0, 0]


class _Examples:
    """The training questions with their pairs and masks at SIDE px, loaded once."""

    def __init__(self, samples: list[dict]) -> None:
        self.pairs, self.rows = [], []
        index_of = {}
        for sample in samples:
            key = pair_key(sample)
            if key not in index_of:
                index_of[key] = len(self.pairs)
                t1, t2 = load_images(sample)
                self.pairs.append(pair_tensor(t1, t2))
                size = t1.shape[:2]
            if sample.get("kind") == MULTI_KIND:  # one row per change the question lists
                for target in sample["targets"]:
                    mask = read_mask(target["mask_path"]) if target["present"] else np.zeros(size, dtype=bool)
                    self.rows.append((index_of[key], croi_index(target), _mask_tensor(mask), target["present"]))
                continue
            mask = load_mask(sample, size)
            self.rows.append((index_of[key], croi_index(sample), _mask_tensor(mask), SEG in sample["answer"]))

    def batch(self, indices: list[int], flip: list[bool]):
        pairs, crois, masks, present = [], [], [], []
        for index, mirrored in zip(indices, flip):
            pair, croi, mask, is_present = self.rows[index]
            image = self.pairs[pair]
            if mirrored:
                image, mask = image.flip(-1), mask.flip(-1)
            pairs.append(image)
            crois.append(croi)
            masks.append(mask)
            present.append(is_present)
        return (torch.stack(pairs), torch.tensor(crois), torch.stack(masks), torch.tensor(present))


def _loss(mask_logits, presence_logits, masks, present) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(presence_logits, present.float())
    if bool(present.any()):
        logits, target = mask_logits[present], (masks[present] > 0.5).float()
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * target).sum(dim=(1, 2)) + 1) / (prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
        loss = loss + F.binary_cross_entropy_with_logits(logits, target) + dice.mean()
    return loss


def train_specialist(samples: list[dict], seconds: float, *, seed: int = 0, batch_size: int = 8,
                     learning_rate: float = 2e-3, max_steps: int | None = None) -> tuple[SpecialistUNet, dict]:
    """Trains for `seconds` of wall-clock time (or `max_steps`, whichever ends first); returns the network (in
    eval mode) and `{"steps", "seconds"}`. The one-cycle learning rate follows the elapsed share of the budget."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    examples = _Examples(samples)
    network = SpecialistUNet()
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    network.train()
    start, steps = time.perf_counter(), 0
    while True:
        elapsed = time.perf_counter() - start
        share = max(elapsed / seconds, 0.0 if max_steps is None else steps / max_steps)
        if share >= 1.0:
            break
        # one cycle: a tenth warming up, then cosine down to a hundredth
        scale = share / 0.1 if share < 0.1 else 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (share - 0.1) / 0.9))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * scale
        indices = [rng.randrange(len(examples.rows)) for _ in range(batch_size)]
        pairs, crois, masks, present = examples.batch(indices, [rng.random() < 0.5 for _ in indices])
        mask_logits, presence_logits = network(pairs, crois)
        loss = _loss(mask_logits, presence_logits, masks, present)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    network.eval()
    return network, {"steps": steps, "seconds": round(time.perf_counter() - start, 1)}


def _answer(sample: dict, present: bool) -> str:
    if present:
        return plain_answers(sample["croi"], sample["direction"])[0].replace(f" {SEG}", "")
    return absent_answer(sample["croi"], sample["direction"], rng=random.Random(0))


@torch.no_grad()
def _masks(network, pairs: torch.Tensor, crois: list[int], size: tuple[int, int]) -> tuple[list, list]:
    """Masks at `size` (empty where presence says absent) and the presence decisions."""
    mask_logits, presence_logits = network(pairs, torch.tensor(crois))
    full = F.interpolate(mask_logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    present = (presence_logits > 0).tolist()
    return [(m > 0).numpy() & p for m, p in zip(full, present)], present


def _multi_prediction(network, pair: torch.Tensor, sample: dict, size: tuple[int, int]) -> dict:
    """A question about several changes, asked once per listed change: a target per change decided present."""
    targets = sample["targets"]
    masks, present = _masks(network, pair[None].expand(len(targets), -1, -1, -1),
                            [croi_index(t) for t in targets], size)
    found = [{"label": t["label"], "mask": m} for t, m, there in zip(targets, masks, present) if there]
    parts = [(t["croi"], t["direction"]) for t in targets]
    text = multi_answer([p for p, there in zip(parts, present) if there],
                        [p for p, there in zip(parts, present) if not there], rng=random.Random(0))
    return {"text": text.replace(f" {SEG}", ""), "mask": np.any(masks, axis=0), "seg": any(present),
            "targets": found, "swapped_mask": None, "swap_source": None, "order_mask": None}


def predict_specialist(network: SpecialistUNet, samples: list[dict], batch_size: int = 16) -> list[dict]:
    """Predictions in `reasoncd.evaluation.scoring.predict_samples`' format, for `score`."""
    results: list[dict | None] = [None] * len(samples)
    for indices in batches_by_pair(samples, batch_size):
        multi = [i for i in indices if samples[i].get("kind") == MULTI_KIND]
        for i in multi:
            t1, t2 = load_images(samples[i])
            results[i] = _multi_prediction(network, pair_tensor(t1, t2), samples[i], t1.shape[:2])
        indices = [i for i in indices if i not in multi]
        if not indices:
            continue
        batch = [samples[i] for i in indices]
        images = {}
        for sample in batch:
            if pair_key(sample) not in images:
                images[pair_key(sample)] = load_images(sample)
        size = next(iter(images.values()))[0].shape[:2]
        forward = torch.stack([pair_tensor(*images[pair_key(s)]) for s in batch])
        backward = torch.stack([pair_tensor(*reversed(images[pair_key(s)])) for s in batch])
        crois = [croi_index(s) for s in batch]
        masks, present = _masks(network, forward, crois, size)
        ordered, _ = _masks(network, backward, crois, size)
        truths = [load_mask(s, size) for s in batch]
        sources = swap_sources([pair_key(s) for s in batch], [truth_key(t) for t in truths], present)
        donors = [i for i, source in enumerate(sources) if source is not None]
        swapped = [None] * len(batch)
        if donors:
            logits, _ = network(forward[donors], torch.tensor([crois[sources[i]] for i in donors]))
            full = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            for row, mask in zip(donors, full):
                swapped[row] = (mask > 0).numpy()
        for row, i in enumerate(indices):
            results[i] = {"text": _answer(batch[row], present[row]), "mask": masks[row], "seg": present[row],
                          "swapped_mask": swapped[row],
                          "swap_source": None if sources[row] is None else indices[sources[row]],
                          "order_mask": ordered[row] if swapped_order_truth_path(batch[row]) else None}
    return results
