"""bench.py's computed plans: the FLOPs behind the feature-cache figures and the 7B memory plan (no timing here)."""
import pytest

from benchmarks import bench
from configuration_reasoncd import ReasonCDConfig


def llm_forward_flops(config: ReasonCDConfig, tokens: int) -> float:
    """Matmul FLOPs of one LLaMA forward over `tokens` positions, written out from the config."""
    text = config.text_config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    kv = hidden // text.num_attention_heads * text.num_key_value_heads
    per_layer = hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * text.intermediate_size
    linear = layers * per_layer + hidden * text.vocab_size  # lm_head over every position
    attention = layers * 4 * tokens * tokens * hidden  # QK^T and AV
    return 2 * linear * tokens + attention


def test_compute_plan_counts_the_language_model_exactly_and_derives_the_speedup():
    plan = bench.compute_plan(presets=("tiny",))["tiny"]
    config = ReasonCDConfig.from_preset("tiny")
    assert plan["sequence_tokens"] == 2 * config.image_seq_length + 64
    counted = plan["forward_tflops"]["llm_per_question"] * 1e12
    assert abs(counted - llm_forward_flops(config, plan["sequence_tokens"])) / counted < 1e-3

    forward = plan["forward_tflops"]
    frozen = forward["clip_per_pair"] + forward["sam_encoder_per_pair"]
    for key, step in plan["training_step_per_pair"].items():
        questions = 3 if key.startswith("3") else 1
        llm_factor = 3 if key.endswith("checkpointed") else 2
        trained = 3 * forward["fusion_per_pair"] + questions * (llm_factor * forward["llm_per_question"]
                                                                + 3 * forward["decoder_per_question"])
        assert abs(step["tflops_with_cache"] - trained) / trained < 1e-4
        assert abs(step["tflops_without_cache"] - step["tflops_with_cache"] - frozen) / frozen < 1e-2
    steps = plan["training_step_per_pair"]
    # More questions per pair, or recomputation, dilute what the cache saves.
    assert steps["1_question"]["predicted_cache_speedup"] >= steps["3_questions"]["predicted_cache_speedup"]
    assert steps["1_question"]["predicted_cache_speedup"] >= steps["1_question_checkpointed"]["predicted_cache_speedup"]


def test_the_papers_frozen_encoders_outweigh_the_tiny_presets():
    plan = bench.compute_plan(presets=("tiny", "reasoncd-7b"))
    share = {preset: (p["forward_tflops"]["clip_per_pair"] + p["forward_tflops"]["sam_encoder_per_pair"])
             / p["training_step_per_pair"]["1_question"]["tflops_without_cache"] for preset, p in plan.items()}
    # SAM ViT-H at 1024 px is the largest single cost of a 7B step; in `tiny` the encoders are a few per cent.
    assert share["reasoncd-7b"] > 0.3 and share["tiny"] < 0.1
    assert plan["reasoncd-7b"]["forward_tflops"]["sam_encoder_per_pair"] > \
        plan["reasoncd-7b"]["forward_tflops"]["llm_per_question"]


def test_memory_plan_orders_the_precisions_and_cards():
    plan = bench.memory_plan()
    inference = plan["inference_gib"]
    assert inference["bf16"] > inference["int8"] > inference["int4"] > 0
    # bf16 weights alone: two bytes per parameter.
    assert inference["bf16"] > 2 * plan["parameters"] / 2**30
    training = plan["lora_training_bf16_gib"]
    assert training["batch_1"] < training["batch_2"] < training["batch_4"]
    fits = plan["fits_gib_card"]
    for small, large in ((24, 48), (48, 80)):
        for kind in fits[small]:
            assert set(fits[small][kind]) <= set(fits[large][kind])
    assert fits[80]["inference"] == ["bf16", "int8", "int4"]


def test_the_plans_weight_arithmetic_matches_a_loaded_checkpoint():
    pytest.importorskip("bitsandbytes", reason="the 8/4-bit footprints need bitsandbytes (pip install -e .[quant])")
    check = bench.measured_footprints("tiny")
    planned, measured = check["planned_mib"], check["measured_mib"]
    assert measured["bf16"] > measured["int8"] > measured["int4"]
    for name in ("bf16", "int8"):
        assert abs(planned[name] - measured[name]) / measured[name] < 0.01, (name, planned, measured)
    # The plan also budgets NF4's block scales, which the footprint leaves out: a little above, never below.
    assert 0 <= planned["int4"] - measured["int4"] < 0.06 * measured["int4"]
