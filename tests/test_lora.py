"""reasoncd.training.lora: the adapter's trainable set learns (a few optimiser steps on one batch lower the loss),
and its dropout draws masks as `nn.Dropout` does."""
import torch

from reasoncd.build import build_tiny
from reasoncd.data.samples import SEG, load_split
from reasoncd.training.dataset import ReasonCDCollator
import pytest

from reasoncd.training.lora import PackedDropout, apply_lora


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


def test_packed_dropout_drops_at_its_rate_keeps_the_mean_and_repeats_with_the_seed():
    dropout = PackedDropout(0.05).train()
    ones = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(3)
    out = dropout(ones)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.05) < 0.002, dropped  # 1e6 draws: the standard error is 0.0002
    assert abs(out.mean().item() - 1.0) < 0.003
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 65536 / (65536 - 3277)))
    # Rows and columns are dropped alike: no stripe of the 16-bit packing shows.
    assert (out == 0).float().mean(dim=0).std() < 0.01 and (out == 0).float().mean(dim=1).std() < 0.01
    out.sum().backward()
    torch.testing.assert_close(ones.grad, out.detach())  # the gradient passes the kept elements, scaled alike
    torch.manual_seed(3)
    assert torch.equal(dropout(torch.ones(1000, 1000)), out.detach())
    assert not torch.equal(dropout(torch.ones(1000, 1000)), out.detach())
    x = torch.randn(7, 5)
    assert dropout.eval()(x) is x
    with pytest.raises(ValueError, match="dropout probability 1.0"):
        PackedDropout(1.0)


def test_apply_lora_puts_packed_dropout_on_every_lora_path():
    model, _ = build_tiny(seed=1)
    peft_model = apply_lora(model, rank=4, alpha=8, dropout=0.1, targets=("q_proj", "down_proj"))
    paths = {name: module for name, module in peft_model.named_modules() if name.endswith(".lora_dropout.default")}
    layers = model.config.text_config.num_hidden_layers
    assert len(paths) == 2 * layers
    assert all(isinstance(module, PackedDropout) and module.p == 0.1 for module in paths.values())
    without = apply_lora(build_tiny(seed=1)[0], rank=4, alpha=8, dropout=0.0, targets=("q_proj",))
    assert not any(isinstance(module, PackedDropout) for module in without.modules())
