"""Every precision path of the model: a cast with `.to(dtype)` / `.half()` (what DeepSpeed's bf16 and fp16 modes do
to the whole module) and `from_pretrained(dtype=...)`, each followed by a training forward and by `generate` with
masks; the parts that must stay float32 stay float32; the frozen-feature cache answers in the model's dtype."""
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor, LogitsProcessorList

from helpers import ForceAnswers, image_pair, make_seg_the_only_answer, seg_tiny, tiny_checkpoint
from modeling_reasoncd import Float32BatchNorm2d
from reasoncd.training.feature_cache import FrozenFeatureCache, image_keys

QUESTIONS = ["new buildings", "water"]
ANSWERS = ["It's the new buildings [SEG].", "It's the water [SEG]."]
HALF_PRECISIONS = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def pair():
    return image_pair(96, 128, seed=3)


def float32_parts(model) -> dict[str, torch.Tensor]:
    """What must stay float32 under any cast: SAM's positional-encoding matrix and every batch-norm statistic."""
    parts = {"pe": model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix}
    for name, module in model.named_modules():
        if isinstance(module, Float32BatchNorm2d):
            parts[f"{name}.running_mean"], parts[f"{name}.running_var"] = module.running_mean, module.running_var
    return parts


def training_inputs(processor, pair):
    t1, t2 = pair
    change = np.abs(t2.astype(int) - t1.astype(int)).sum(-1) > 0
    return processor(images_t1=t1, images_t2=t2, text=QUESTIONS, answers=ANSWERS, masks=[change, change],
                     return_tensors="pt")


def forced_masks(model, processor, pair):
    """`generate` with the answers forced to hold `[SEG]`: the low-resolution mask logits of both questions."""
    t1, t2 = pair
    labels = processor(images_t1=t1, images_t2=t2, text=QUESTIONS, answers=ANSWERS)["labels"]
    rows = [row[row != -100].tolist() for row in labels]
    inputs = processor(images_t1=t1, images_t2=t2, text=QUESTIONS, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max(map(len, rows)) + 1,
                         logits_processor=LogitsProcessorList([ForceAnswers(rows, model.config.eos_token_id)]))
    assert out.seg_present.all()
    return out.pred_masks.float()


@pytest.mark.parametrize("dtype", HALF_PRECISIONS, ids=str)
def test_a_cast_model_trains_and_generates_masks(dtype, pair):
    model, processor = seg_tiny(0)
    reference = forced_masks(model, processor, pair)
    kept = {name: tensor.clone() for name, tensor in float32_parts(model).items()}
    model = model.half() if dtype == torch.float16 else model.to(dtype)

    assert model.language_model.dtype == dtype and model.feature_fusion.ffn.layers[0].weight.dtype == dtype
    after = float32_parts(model)
    assert {name: tensor.dtype for name, tensor in after.items()} == dict.fromkeys(kept, torch.float32)
    for name, tensor in kept.items():
        assert torch.equal(after[name], tensor), name  # kept, not rounded through the half dtype

    masks = forced_masks(model, processor, pair)
    assert torch.isfinite(masks).all()
    # The same decisions as in float32 wherever float32 is not close to undecided.
    decided = reference.abs() > 0.05 * reference.abs().max()
    agreement = ((masks > 0) == (reference > 0))[decided].float().mean()
    assert agreement > 0.95, float(agreement)

    model.train()
    out = model(**training_inputs(processor, pair))
    assert torch.isfinite(out.loss) and out.loss.dtype in (dtype, torch.float32)
    out.loss.backward()
    fusion_grad = model.feature_fusion.ffn.layers[0].weight.grad
    assert fusion_grad is not None and fusion_grad.dtype == dtype and torch.isfinite(fusion_grad).all()
    # Batch statistics were updated in float32.
    statistics = float32_parts(model)
    assert all(t.dtype == torch.float32 for t in statistics.values())
    assert any(not torch.equal(statistics[name], kept[name]) for name in kept if name.endswith("running_var"))


@pytest.mark.parametrize("dtype", HALF_PRECISIONS, ids=str)
def test_from_pretrained_in_half_precision_keeps_float32_parts_and_answers_with_masks(dtype, tmp_path_factory, pair):
    checkpoint = tiny_checkpoint(tmp_path_factory)
    model, info = AutoModel.from_pretrained(checkpoint, trust_remote_code=True, dtype=dtype,
                                            output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.language_model.dtype == dtype
    parts = {name: t.dtype for name, t in model.named_buffers()
             if name.endswith(("running_mean", "running_var", "positional_encoding_gaussian_matrix"))}
    assert parts and set(parts.values()) == {torch.float32}, parts
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    make_seg_the_only_answer(model)
    t1, t2 = pair
    result = processor.post_process_generation(
        model.eval().generate(**processor(images_t1=t1, images_t2=t2, text="new buildings"), max_new_tokens=4))[0]
    assert "[SEG]" in result["raw_text"]
    assert result["mask"].shape == t1.shape[:2]
    assert np.isfinite(result["mask_confidence"])


def test_cached_features_come_in_the_models_dtype(pair):
    model, processor = seg_tiny(0)
    t1, t2 = pair
    batch = processor(images_t1=t1, images_t2=t2, text=QUESTIONS, return_tensors="pt")
    cache = FrozenFeatureCache(model)
    stored = cache.frozen_features(model, batch, image_keys(batch))
    assert stored.sam_features_t1.dtype == torch.float32
    model.to(torch.bfloat16)  # e.g. DeepSpeed's bf16 mode after the cache was filled in float32
    features = cache.frozen_features(model, batch, image_keys(batch))
    assert cache.hits == 2 and cache.misses == 2  # T1 and T2 of the one pair, encoded once
    assert features.sam_features_t1.dtype == features.vision_features_t1.dtype == torch.bfloat16
    torch.testing.assert_close(features.sam_features_t2.float(), stored.sam_features_t2, rtol=1e-2, atol=1e-2)
    # and the model takes them as they come
    out = model(**batch, frozen_features=features)
    assert out.logits.dtype == torch.bfloat16
