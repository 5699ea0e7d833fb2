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
    # SAM ViT-H at 1024 px is the largest single cost of a 7B step; in `tiny` the encoders are about a third (its
    # SAM's 8-px patches, 1,024 per image, beside a language model that reads 4 tokens per image and a ResNet at a
    # quarter width).
    assert share["reasoncd-7b"] > 0.4 > share["tiny"] > 0.25
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


def finished_run(root, name: str, validations: list[float], test_fidelity: float):
    """A train.py output folder as `bench.py agreement` reads it: metrics.json and two checkpoints."""
    import json

    run = root / name
    for step, upto in ((10, 1), (20, len(validations))):  # the newest checkpoint holds the whole history
        checkpoint = run / "checkpoints" / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        history = [{"loss": 1.0, "step": 1}] + [{"eval_fidelity_score": v, "step": 10 * (k + 1)}
                                                for k, v in enumerate(validations[:upto])]
        (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (run / "metrics.json").write_text(json.dumps({"fidelity_score": test_fidelity}))
    return run


def test_agreement_ranks_runs_by_each_validation_against_their_test_fidelity(tmp_path):
    tests = [0.40, 0.50, 0.60, 0.61]
    first = [0.30, 0.20, 0.25, 0.10]   # ranks 3, 1, 2, 0 where the test ranks 0, 1, 2, 3
    last = [0.41, 0.52, 0.58, 0.57]    # ranks them as the test does except the last two, 0.01 apart in test
    runs = [finished_run(tmp_path, f"run{i}", [first[i], last[i]], tests[i]) for i in range(4)]
    report = bench.bench_agreement(runs, margin=0.03)
    early, late = report["per_validation"]
    # pairs apart by more than 0.03 in test: all but (run2, run3)
    assert early["pairs"] == late["pairs"] == 5
    assert late["pairs_ranked_alike"] == 5 and late["spearman"] == pytest.approx(0.8)  # ranks 0,1,3,2 vs 0,1,2,3
    # first: 0.30 > 0.20 (wrong), 0.30 > 0.25 (wrong), 0.30 > 0.10 (wrong), 0.20 < 0.25 (right), 0.20 > 0.10 (wrong)
    assert early["pairs_ranked_alike"] == 1 and early["spearman"] == pytest.approx(-0.8)
    assert "| 2 | 0.80 | 5/5 (1.00) |" in bench.agreement_table(report)


def test_agreement_refuses_too_few_or_unfinished_runs(tmp_path):
    runs = [finished_run(tmp_path, f"run{i}", [0.1, 0.2], 0.3 + i / 10) for i in range(3)]
    with pytest.raises(SystemExit, match="at least 3 runs"):
        bench.bench_agreement(runs[:2], margin=0.03)
    (runs[1] / "metrics.json").unlink()
    with pytest.raises(SystemExit, match="run1: no metrics.json"):
        bench.bench_agreement(runs, margin=0.03)


def test_ranks_share_ties():
    assert bench.ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [2.5, 0.0, 2.5, 1.0]


def test_decide_scores_every_model_on_the_decision_sets_validation_and_test_splits_pooled(tmp_path,
                                                                                          tmp_path_factory,
                                                                                          monkeypatch):
    from helpers import tiny_checkpoint
    from reasoncd.data.samples import load_split
    from reasoncd.evaluation.report import split_figures
    from reasoncd.evaluation.scoring import predict_samples, score
    from reasoncd.loading import load_model

    checkpoint = tiny_checkpoint(tmp_path_factory)
    monkeypatch.setattr(bench, "REPO", tmp_path)  # the decision set is cached under the repository's data/
    report = bench.bench_decide({"twice": [checkpoint, checkpoint], "once": [checkpoint]}, pairs=30, seed=5)
    samples = load_split(report["data"], "val") + load_split(report["data"], "test")
    assert str(tmp_path) in report["data"] and report["n_questions"] == len(samples) > 0
    assert report["n_absent"] == sum("[SEG]" not in sample["answer"] for sample in samples)
    model, processor = load_model(checkpoint)
    result = score(samples, predict_samples(model, processor, samples, progress=False))
    expected = {"all": dict(split_figures(result)),
                **{part: dict(split_figures(figures)) for part, figures in result["by_phrasing"].items()}}
    assert set(expected) == {"all", "seen", "heldout"}  # the decision set asks in both kinds of phrasing
    for name in ("twice", "once"):
        variant = report["variants"][name]
        for part, figures in expected.items():
            summary = variant["summary"] if part == "all" else variant["by_phrasing"][part]
            for figure, value in figures.items():
                if value is None:
                    assert summary[figure] is None
                else:
                    assert summary[figure]["mean"] == pytest.approx(value) and summary[figure]["spread"] == 0.0
    assert len(report["variants"]["twice"]["runs"]) == 2
    table = bench.decide_table(report)
    assert f"| {len(samples)} questions ({report['n_absent']} absent)" in table and "| twice (2) | once (1) |" in table
    assert "| twice, seen phrasings | twice, held-out phrasings | once, seen phrasings |" in table
    with pytest.raises(FileNotFoundError, match="no such folder"):
        bench.bench_decide({"missing": [tmp_path / "nowhere"]}, pairs=30, seed=5)


def test_mean_and_spread_summarises_each_figure_over_the_runs_that_measured_it():
    summary = bench.mean_and_spread([{"steering": 0.5, "order": None, "absent": None},
                                     {"steering": 0.8, "order": 0.2, "absent": None}])
    assert summary["steering"] == {"mean": pytest.approx(0.65), "spread": pytest.approx(0.3)}
    assert summary["order"] == {"mean": pytest.approx(0.2), "spread": 0.0}
    assert summary["absent"] is None
