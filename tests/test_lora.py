"""reasoncd.training.lora: the adapter's trainable set learns (a few optimiser steps on one batch lower the loss)."""
import torch

from reasoncd.build import build_tiny
from reasoncd.data.samples import SEG, load_split
from reasoncd.training.dataset import ReasonCDCollator
from reasoncd.training.lora import apply_lora


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(samples_dir):
    torch.manual_seed(0)
    model, processor = build_tiny(seed=1)
    samples = [s for s in load_split(samples_dir, "train") if SEG in s["answer"]][:4]
    batch = ReasonCDCollator(processor)(samples)
    peft_model = apply_lora(model, rank=8, alpha=16, full_embeddings=True)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    peft_model.train()
    losses = []
    for _ in range(8):
        out = peft_model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
