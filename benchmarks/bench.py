"""Benchmarks (standard-library timing; no timed assertions live in the tests).

    python benchmarks/bench.py speed [--presets tiny medium] [--model runs/quickstart/model]  # one process, one run
    python benchmarks/bench.py speed --presets medium --bf16  # on a GPU: bf16 inference and training, CUDA memory
    python benchmarks/bench.py quickstart                     # wall time of `python train.py`
    python benchmarks/bench.py baseline [--seconds S] [--seeds 0 1]  # a specialist without language, same data/time
    python benchmarks/bench.py proxy --variant NAME="FLAGS" ... [--seeds 0 1] [--steps 150]  # short train.py runs
    python benchmarks/bench.py agreement RUN RUN RUN ...  # how early each validation ranks finished runs alike
    python benchmarks/bench.py memory        # 7B memory plan (computed), what the feature cache can save (FLOPs)
    python benchmarks/bench.py memory --measure  # ... and the plan's weights against a medium checkpoint, bf16/8/4-bit
    python benchmarks/bench.py serve         # the change-detection pipeline answering 8 threads: requests/s, latency
    python benchmarks/bench.py scene [--sizes 2048 8192] [--presets tiny medium]  # predict_scene.py: tiles/s, peak RSS
    python benchmarks/bench.py scene-figure [--model runs/quickstart/model]  # docs/scene-example.jpg
    python benchmarks/bench.py paper-widths  # reasoncd-7b's widths, 2 layers deep: LoRA step + generate, fp32 and bf16

`speed` measures, per preset: the latency of the first question on a pair, the marginal latency of questions
2..8 (asked together, sharing the pair's encoding and KV-cached prompt prefix), the same 8-question session run
LISA-style (no KV cache, everything recomputed per question), generation throughput with and without the KV
cache, a training step with and without the frozen-feature cache, and tiles per second over a 2048x2048 scene
cut into 256x256 tiles; each with the peak resident memory seen while it ran. Figures go to stdout as a table and
to runs/bench-<command>.json, with the machine they came from.

`baseline` trains the specialist of `reasoncd/evaluation/specialist.py` (a question-conditioned U-Net without
language, the CRoI given as class x direction) on the quickstart's synthetic training split for the quickstart's
wall-clock budget (`--seconds`, default: the time of the last `bench.py quickstart` run, else 600 s), once per seed,
and scores it on the test split and on train.py's fixed training sample with the code eval.py uses.

`proxy` ranks variants of the quickstart quickly: per variant (a name and train.py flags) and seed, a short
`train.py` run (`--steps` optimiser steps, one validation, test and training sample scored with free generation)
on the quickstart's data (synthetic seed 0 whatever the model seed), then each figure's mean and spread over seeds.

`agreement` reads finished `train.py` runs (their metrics.json and newest checkpoint's log history) and says, per
validation, how well the validation fidelity at that point ranks the runs as their final test fidelity does
(Spearman's correlation; the share of run pairs, apart by more than `--margin`, ranked the same way): how short a
proxy run can be and still rank variants.

`serve` sends PNG-encoded 256x256 pairs, one question each, to one `change-detection` pipeline (tiny preset) from
1 thread and then from 8, for each decoding cap (`max_concurrent`), and reports requests per second, the median
and 95th-percentile latency and the peak resident memory.

`scene` runs predict_scene.py, as a user would, on synthetic GeoTIFF scenes (UTM zone 50N, 0.5 m pixels) built
from the synthetic generator's pairs, with a random model of each preset whose language model always answers
`[SEG]`: every tile runs the mask path and every tile's probabilities are blended and polygonised, the most work a
scene can take. It reports tiles per second through the model and the command's peak resident memory (from the
kernel's accounting of the finished process).
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "new buildings",
    "changes that provide more living areas for people",
    "changes caused by heavy rainfall",
    "demolished buildings, and explain why",
    "deforestation",
    "new sports fields",
    "river",
    "land cleared for construction",
]


def machine() -> dict:
    return {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class PeakMemory:
    """Peak resident memory (and CUDA memory) while a block runs, sampled every few milliseconds."""

    def __init__(self):
        self.peak_mib = 0.0

    @staticmethod
    def _rss_mib() -> float:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    @contextmanager
    def watch(self):
        stop = threading.Event()
        self.peak_mib = self._rss_mib()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

        def sample():
            while not stop.is_set():
                self.peak_mib = max(self.peak_mib, self._rss_mib())
                stop.wait(0.005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak_mib = max(self.peak_mib, self._rss_mib())
        if torch.cuda.is_available():
            self.cuda_peak_mib = torch.cuda.max_memory_allocated() / 2**20


def timed(function, repeats: int = 3) -> tuple[float, float]:
    """
    Median seconds of `repeats` runs after one warm-up, and the peak memory (MiB) over them: resident memory on
    the CPU, allocated GPU memory on CUDA.
    """
    function()
    memory = PeakMemory()
    times = []
    with memory.watch():
        for _ in range(repeats):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            function()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = memory.cuda_peak_mib if torch.cuda.is_available() else memory.peak_mib
    return float(np.median(times)), round(peak, 1)


def load_model(preset: str, model_dir: Path | None):
    from reasoncd.build import build_tiny
    from modeling_reasoncd import ReasonCDForChangeDetection
    from processing_reasoncd import ReasonCDProcessor

    if model_dir is not None and preset == "tiny" and model_dir.is_dir():
        model = ReasonCDForChangeDetection.from_pretrained(model_dir)
        processor = ReasonCDProcessor.from_pretrained(model_dir, trust_remote_code=True)
        source = str(model_dir)
    else:
        model, processor = build_tiny(0, preset=preset)
        source = f"random {preset}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), processor, source


def scene_pair(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic pair from the built-in generator (tiled when larger than one generated pair)."""
    from reasoncd.data.synthetic import synthesize_pair

    tiles = []
    per_side = max(1, size // 256)
    for index in range(per_side * per_side):
        pair = synthesize_pair(index, seed=seed, size=256)
        tiles.append((pair.image1, pair.image2))
    rows1 = [np.concatenate([t[0] for t in tiles[r * per_side:(r + 1) * per_side]], axis=1) for r in range(per_side)]
    rows2 = [np.concatenate([t[1] for t in tiles[r * per_side:(r + 1) * per_side]], axis=1) for r in range(per_side)]
    return np.concatenate(rows1, axis=0), np.concatenate(rows2, axis=0)


def bench_session(model, processor, t1, t2, max_new_tokens: int) -> dict:
    device = model.device

    def ask(questions, **options):
        inputs = processor(images_t1=t1, images_t2=t2, text=questions).to(device)
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=max_new_tokens, **options)

    first, first_mem = timed(lambda: ask(QUESTIONS[:1]))
    session, session_mem = timed(lambda: ask(QUESTIONS))
    # LISA-style: every question on its own, images encoded again, no KV cache.
    lisa, lisa_mem = timed(lambda: [ask([q], use_cache=False) for q in QUESTIONS], repeats=1)
    marginal = (session - first) / (len(QUESTIONS) - 1)
    return {
        "first_question_s": round(first, 4),
        "session_8_questions_s": round(session, 4),
        "marginal_question_s": round(marginal, 4),
        "marginal_over_first": round(marginal / first, 3),
        "lisa_style_session_s": round(lisa, 4),
        "speedup_over_lisa_style": round(lisa / session, 2),
        "peak_mib": {"first": first_mem, "session": session_mem, "lisa_style": lisa_mem},
    }


def bench_throughput(model, processor, t1, t2, new_tokens: int) -> dict:
    """Tokens per second of a forced-length greedy decode (no early stop), with and without the KV cache."""
    inputs = processor(images_t1=t1, images_t2=t2, text=QUESTIONS[:4]).to(model.device)
    with torch.no_grad():
        features = model.encode_frozen(inputs["pixel_values_t1"], inputs["pixel_values_t2"],
                                       inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])
    result = {}
    for name, use_cache in (("with_kv_cache", True), ("without_kv_cache", False)):
        def run():
            with torch.no_grad():
                model.generate(**inputs, frozen_features=features, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, use_cache=use_cache)
        seconds, peak = timed(run, repeats=2)
        result[name] = {"tokens_per_s": round(4 * new_tokens / seconds, 1), "peak_mib": peak}
    result["kv_cache_speedup"] = round(result["with_kv_cache"]["tokens_per_s"]
                                       / result["without_kv_cache"]["tokens_per_s"], 2)
    return result


def bench_train_step(model, processor, t1, t2) -> dict:
    """One optimiser step (batch 4, LoRA as in training) with frozen features from the cache vs recomputed."""
    from reasoncd.training.feature_cache import FrozenFeatureCache, image_keys
    from reasoncd.training.lora import apply_lora

    peft_model = apply_lora(model, rank=8, alpha=16)
    peft_model.train()
    crops = [(t1[i * 64:i * 64 + 256, :256], t2[i * 64:i * 64 + 256, :256]) for i in range(4)]
    batch = processor(images_t1=[c[0] for c in crops], images_t2=[c[1] for c in crops], text=QUESTIONS[:4],
                      answers=["It's [SEG]."] * 4, masks=[np.zeros((256, 256), bool)] * 4)
    keys = image_keys(batch)
    batch = batch.to(model.device)
    cache = FrozenFeatureCache(model)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-5)

    def step(cached: bool):
        extra = {"frozen_features": cache.frozen_features(model, batch, keys)} if cached else {}
        loss = peft_model(**batch, **extra, answer_logits_only=True).loss  # as the trainer computes it
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    without, without_mem = timed(lambda: step(False))
    with_cache, with_mem = timed(lambda: step(True))
    peft_model.unload()
    return {"step_s_without_cache": round(without, 4), "step_s_with_cache": round(with_cache, 4),
            "cache_speedup": round(without / with_cache, 2),
            "peak_mib": {"without_cache": without_mem, "with_cache": with_mem}}


# reasoncd-7b with every width of the paper (LLaMA 4096 wide, 11,008 MLP, 32 heads, 32,005 tokens; CLIP ViT-L/14 at
# 224 px; SAM ViT-H 1280 wide at 1,024 px; ResNet34-FPN) but two layers / blocks in each deep stack.
PAPER_WIDTHS_SHALLOW = {"text_config": {"num_hidden_layers": 2}, "vision_config": {"num_hidden_layers": 2},
                        "sam_config": {"encoder_depth": 2, "encoder_global_attn_indexes": [1]}}


def paper_width_model(seed: int = 0):
    """The shallow paper-width model (random weights) and a processor with the offline tokenizer, whose ids all
    fall within the paper's 32,005-row vocabulary."""
    from configuration_reasoncd import ReasonCDConfig
    from modeling_reasoncd import ReasonCDForChangeDetection
    from reasoncd.build import make_processor, set_token_ids
    from reasoncd.training.tokenizer import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(seed=seed)
    config = ReasonCDConfig.from_preset("reasoncd-7b", **PAPER_WIDTHS_SHALLOW)
    vocabulary = config.text_config.vocab_size
    set_token_ids(config, tokenizer)
    config.text_config.vocab_size = vocabulary
    torch.manual_seed(seed)
    return ReasonCDForChangeDetection(config), make_processor(config, tokenizer)


def bench_paper_widths(dtypes: list[str], max_new_tokens: int = 16) -> dict:
    """
    One LoRA training step (r = 8 on q/v, the paper's recipe; two questions about one pair, masks and answers) and
    `generate` with a mask for each of two questions, in each dtype (the model cast, as DeepSpeed casts it): seconds
    for the forward, the backward and the generation, and the peak memory of the whole round.
    """
    from reasoncd.build import make_seg_the_only_answer
    from reasoncd.training.lora import apply_lora

    model, processor = paper_width_model()
    make_seg_the_only_answer(model)  # every answer holds [SEG]: generation decodes both masks
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    t1, t2 = scene_pair(256)
    change = np.abs(t2.astype(int) - t1.astype(int)).sum(-1) > 0
    questions = QUESTIONS[:2]
    batch = processor(images_t1=t1, images_t2=t2, text=questions, answers=["It's [SEG]."] * 2,
                      masks=[change, change]).to(model.device)
    prompts = processor(images_t1=t1, images_t2=t2, text=questions).to(model.device)
    report = {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "questions": 2,
              "max_new_tokens": max_new_tokens}

    def seconds(function):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    for name in dtypes:
        model.to(getattr(torch, name))
        memory = PeakMemory()
        with memory.watch():
            peft_model = apply_lora(model, rank=8, alpha=16)
            peft_model.train()
            optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-5)
            forward_s, loss = seconds(lambda: peft_model(**batch).loss)
            backward_s, _ = seconds(loss.backward)
            step_s, _ = seconds(optimizer.step)
            del optimizer, loss
            peft_model.unload()
            model.eval()
            generate_s, out = seconds(lambda: model.generate(**prompts, max_new_tokens=max_new_tokens))
        assert bool(out.seg_present.all()) and torch.isfinite(out.pred_masks.float()).all()
        peak = memory.cuda_peak_mib if torch.cuda.is_available() else memory.peak_mib
        report[name] = {"forward_s": round(forward_s, 1), "backward_s": round(backward_s, 1),
                        "optimizer_step_s": round(step_s, 2), "generate_s": round(generate_s, 1),
                        "peak_gib": round(peak / 1024, 2)}
    return report


def paper_widths_table(report: dict) -> str:
    rows = ["| dtype | forward | backward | generate (2 questions, masks) | peak memory |", "|---|---:|---:|---:|---:|"]
    for name in ("float32", "bfloat16", "float16"):
        if name in report:
            r = report[name]
            rows.append(f"| {name} | {r['forward_s']} s | {r['backward_s']} s | {r['generate_s']} s | "
                        f"{r['peak_gib']} GiB |")
    return "\n".join(rows)


def bench_tiles(model, processor, scene_t1, scene_t2, batch: int = 8) -> dict:
    """A 2048x2048 scene in 256x256 tiles, `batch` tiles per call, one question each."""
    tile = 256
    positions = [(r, c) for r in range(0, scene_t1.shape[0], tile) for c in range(0, scene_t1.shape[1], tile)]

    def run():
        for start in range(0, len(positions), batch):
            chunk = positions[start:start + batch]
            inputs = processor(images_t1=[scene_t1[r:r + tile, c:c + tile] for r, c in chunk],
                               images_t2=[scene_t2[r:r + tile, c:c + tile] for r, c in chunk],
                               text=[QUESTIONS[0]] * len(chunk)).to(model.device)
            with torch.no_grad():
                processor.post_process_generation(model.generate(**inputs, max_new_tokens=8))

    seconds, peak = timed(run, repeats=1)
    return {"tiles": len(positions), "batch": batch, "seconds": round(seconds, 2),
            "tiles_per_s": round(len(positions) / seconds, 2), "peak_mib": peak}


def bench_speed(presets: list[str], model_dir: Path | None, max_new_tokens: int, bf16: bool = False) -> dict:
    torch.manual_seed(0)
    t1, t2 = scene_pair(256)
    scene_t1, scene_t2 = scene_pair(2048)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    report = {}
    for preset in presets:
        model, processor, source = load_model(preset, model_dir)
        print(f"[{preset}] {source}", file=sys.stderr)
        # bf16 autocast: weights stay fp32 (as trained), matmuls run in bf16 (the GPU inference/training setting).
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            report[preset] = {
                "model": source,
                "precision": "bf16 autocast" if bf16 else "fp32",
                "session": bench_session(model, processor, t1, t2, max_new_tokens),
                "throughput": bench_throughput(model, processor, t1, t2, new_tokens=32),
                "tiles_2048": bench_tiles(model, processor, scene_t1, scene_t2),
                "train_step": bench_train_step(model, processor, scene_t1, scene_t2),
            }
    return report


def speed_table(report: dict) -> str:
    lines = ["| preset | 1st question | marginal q2..8 (share of 1st) | 8 questions vs LISA-style | tokens/s KV / no KV | "
             "train step cache / no cache | tiles/s (2048² scene) |",
             "|---|---|---|---|---|---|---|"]
    for preset, r in report.items():
        s, t, tr, ti = r["session"], r["throughput"], r["train_step"], r["tiles_2048"]
        lines.append(
            f"| {preset} | {s['first_question_s']:.3f} s | {s['marginal_question_s']:.3f} s "
            f"({s['marginal_over_first']:.0%}) | {s['session_8_questions_s']:.2f} s vs {s['lisa_style_session_s']:.2f} s "
            f"({s['speedup_over_lisa_style']:.1f}x) | {t['with_kv_cache']['tokens_per_s']:.0f} / "
            f"{t['without_kv_cache']['tokens_per_s']:.0f} | {tr['step_s_with_cache']:.3f} s / "
            f"{tr['step_s_without_cache']:.3f} s ({tr['cache_speedup']:.1f}x) | {ti['tiles_per_s']:.1f} |")
    return "\n".join(lines)


def compute_table(plan: dict) -> str:
    lines = ["| preset | CLIP + SAM per pair (frozen) | LLM per question | fusion per pair | "
             "cache speed-up, 1 question / 3 questions per pair (with activation checkpointing) |",
             "|---|---|---|---|---|"]
    for preset, p in plan.items():
        f, s = p["forward_tflops"], p["training_step_per_pair"]
        lines.append(
            f"| {preset} | {f['clip_per_pair'] + f['sam_encoder_per_pair']:.3g} TFLOP | {f['llm_per_question']:.3g} TFLOP "
            f"| {f['fusion_per_pair']:.3g} TFLOP | {s['1_question']['predicted_cache_speedup']:.2f}x / "
            f"{s['3_questions']['predicted_cache_speedup']:.2f}x "
            f"({s['1_question_checkpointed']['predicted_cache_speedup']:.2f}x / "
            f"{s['3_questions_checkpointed']['predicted_cache_speedup']:.2f}x) |")
    return "\n".join(lines)


def parameter_counts(config) -> dict:
    """Total and trainable parameters (meta device), and the language model's decoder-layer weights, which are all
    that 8/4-bit loading quantises (embeddings, lm_head, CLIP, SAM and the fusion module stay as they are)."""
    from reasoncd.build import parameter_report

    rows = {name: (count, trainable) for name, count, trainable in parameter_report(config)}
    text = config.text_config
    embed = 2 * text.vocab_size * text.hidden_size  # embed_tokens + lm_head
    return {"total": sum(count for count, _ in rows.values()), "trainable": sum(t for _, t in rows.values()),
            "quantisable": rows["language_model"][0] - embed}


def planned_weight_bytes(config) -> dict:
    """Weight bytes with everything in bf16, and with the decoder layers in 8 bits (1 byte per weight) or NF4 (half a
    byte, plus about 6 % for block scales under double quantisation)."""
    counts = parameter_counts(config)
    quantisable, other = counts["quantisable"], counts["total"] - counts["quantisable"]
    return {"bf16": 2 * counts["total"], "int8": quantisable + 2 * other, "int4": 0.53 * quantisable + 2 * other}


def measured_footprints(preset: str = "medium") -> dict:
    """
    The planned weight bytes of `preset` against the footprint of a saved random checkpoint loaded in bf16, 8-bit
    and 4-bit (bitsandbytes on whatever device there is; `get_memory_footprint`, which leaves out bitsandbytes' own
    scale tensors), to check the plan's arithmetic where the 7B weights cannot be loaded.
    """
    import tempfile

    from transformers import AutoModel

    from reasoncd.build import build_tiny, save_checkpoint
    from modeling_reasoncd import ReasonCDForChangeDetection
    from reasoncd.loading import finish_quantized_loading

    model, processor = build_tiny(0, preset=preset)
    planned = planned_weight_bytes(model.config)
    device = {"": "cuda" if torch.cuda.is_available() else "cpu"}
    measured = {}
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(model, processor, Path(folder) / "model")
        del model
        for name, bits in (("bf16", None), ("int8", 8), ("int4", 4)):
            options = {} if bits is None else {
                "quantization_config": ReasonCDForChangeDetection.bitsandbytes_config(bits)}
            loaded = AutoModel.from_pretrained(Path(folder) / "model", trust_remote_code=True, dtype=torch.bfloat16,
                                               device_map=device, **options)
            if bits is not None:
                finish_quantized_loading(loaded)
            measured[name] = loaded.get_memory_footprint()
            del loaded
    mib = 2**20
    return {"preset": preset,
            "planned_mib": {name: round(value / mib, 1) for name, value in planned.items()},
            "measured_mib": {name: round(value / mib, 1) for name, value in measured.items()}}


def memory_plan(preset: str = "reasoncd-7b", sequence: int = 600, questions: int = 8) -> dict:
    """
    Memory of the 7B configuration computed from parameter counts (meta device, nothing allocated).

    Inference: weights + the KV cache of one pair's prompt and `questions` answers. 8/4-bit quantise the language
    model's linear layers only (bitsandbytes; CLIP, SAM, the fusion module and lm_head stay bf16). LoRA training
    (bf16 weights, activation checkpointing, AdamW on fp32 trainable parameters): weights + 16 bytes per
    trainable parameter + checkpointed LLM activations + the trainable ResNet/decoder activations per sample.
    """
    from configuration_reasoncd import ReasonCDConfig

    config = ReasonCDConfig.from_preset(preset)
    counts = parameter_counts(config)
    total, trainable = counts["total"], counts["trainable"]
    text = config.text_config
    gib = 2**30
    kv = 2 * text.num_hidden_layers * (sequence + questions * 64) * text.hidden_size * 2
    weights = planned_weight_bytes(config)
    inference = {name: round((w + kv) / gib, 1) for name, w in weights.items()}
    # Per sample: checkpointed layer inputs of the LLM, one layer recomputed, and the trainable fusion/decoder
    # activations at SAM's frame (both dates), measured as ~0.9 GiB per 1024-px image for ResNet34+FPN in bf16.
    sam = config.sam_config.image_size
    per_sample = (text.num_hidden_layers * sequence * text.hidden_size * 2
                  + sequence * (4 * text.hidden_size + 3 * text.intermediate_size) * 4
                  + 2 * 0.9 * gib * (sam / 1024) ** 2)
    optimizer = 16 * trainable
    train = {f"batch_{b}": round((2 * total + optimizer + b * per_sample) / gib, 1) for b in (1, 2, 4)}
    train_fp32 = {f"batch_{b}": round((4 * total + optimizer + 2 * b * per_sample) / gib, 1) for b in (1, 2, 4)}
    fits = {card: {"inference": [k for k, v in inference.items() if v < card * 0.92],
                   "lora_training_bf16": [k for k, v in train.items() if v < card * 0.92],
                   "lora_training_fp32": [k for k, v in train_fp32.items() if v < card * 0.92]}
            for card in (24, 48, 80)}
    return {"preset": preset, "parameters": total, "trainable_parameters": trainable,
            "inference_gib": inference, "lora_training_bf16_gib": train, "lora_training_fp32_gib": train_fp32,
            "fits_gib_card": fits,
            "assumptions": f"prompt {sequence} tokens, {questions} questions x 64 answer tokens, frozen encoders "
                           "cached or run without gradients, fp32 AdamW states for trainable parameters"}


def compute_plan(presets=("tiny", "medium", "reasoncd-7b"), text_tokens: int = 64) -> dict:
    """
    What the frozen-feature cache can save per training step, from forward FLOPs counted on the meta device
    (`torch.utils.flop_counter`, nothing allocated), per image pair asked `q` questions.

    Without the cache a step runs CLIP and SAM (forward only) on both dates; with it, only the trained parts:
    the language model (forward + input gradients = 2x its forward, +1x recomputation under activation
    checkpointing; LoRA's own weight gradients are negligible), the fusion module and the mask decoder
    (forward + backward = 3x). The predicted speed-up is the ratio of the two; the cache cannot do better.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from configuration_reasoncd import ReasonCDConfig
    from modeling_reasoncd import ReasonCDForChangeDetection

    def tflops(function) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            function()
        return counter.get_total_flops() / 1e12

    plan = {}
    for preset in presets:
        config = ReasonCDConfig.from_preset(preset)
        with torch.device("meta"):
            model = ReasonCDForChangeDetection(config)
            clip_size, sam_size = config.vision_config.image_size, config.sam_config.image_size
            grid = config.sam_config.embedding_grid
            sequence = 2 * config.image_seq_length + text_tokens
            sam_pixels = torch.zeros(1, 3, sam_size, sam_size)
            sam_features = torch.zeros(1, config.sam_config.prompt_embed_dim, grid, grid)
            forward = {
                "clip_per_pair": tflops(lambda: model.vision_tower(torch.zeros(2, 3, clip_size, clip_size),
                                                                   output_hidden_states=True)),
                "sam_encoder_per_pair": tflops(lambda: model.sam_image_encoder(torch.zeros(2, 3, sam_size, sam_size))),
                "fusion_per_pair": tflops(lambda: model.feature_fusion(sam_features, sam_features, sam_pixels,
                                                                       sam_pixels)),
                "llm_per_question": tflops(lambda: model.language_model(
                    inputs_embeds=torch.zeros(1, sequence, config.text_config.hidden_size))),
                "decoder_per_question": tflops(lambda: model.decode_masks(
                    sam_features, torch.zeros(1, config.text_config.hidden_size))),
            }
        frozen = forward["clip_per_pair"] + forward["sam_encoder_per_pair"]
        steps = {}
        for checkpointing in (False, True):
            llm_factor = 3 if checkpointing else 2
            for questions in (1, 3):
                trained = (3 * forward["fusion_per_pair"]
                           + questions * (llm_factor * forward["llm_per_question"]
                                          + 3 * forward["decoder_per_question"]))
                key = f"{questions}_question{'s' if questions > 1 else ''}" + ("_checkpointed" if checkpointing else "")
                steps[key] = {"tflops_without_cache": float(f"{trained + frozen:.6g}"),
                              "tflops_with_cache": float(f"{trained:.6g}"),
                              "predicted_cache_speedup": round((trained + frozen) / trained, 2)}
        plan[preset] = {"sequence_tokens": sequence,
                        "forward_tflops": {name: float(f"{value:.6g}") for name, value in forward.items()},
                        "training_step_per_pair": steps}
    return plan


def bench_serve(model_dir: Path | None, threads: int, requests_per_thread: int, max_new_tokens: int,
                caps: list[int]) -> dict:
    """The pipeline under `threads` concurrent callers, for each cap on requests decoding at once."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from pipeline_reasoncd import ReasonCDChangeDetectionPipeline

    model, processor, source = load_model("tiny", model_dir)
    t1, t2 = scene_pair(256)

    def png(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    requests = [{"image_t1": png(t1), "image_t2": png(t2), "text": question} for question in QUESTIONS]
    report = {"model": source, "max_new_tokens": max_new_tokens, "image": "256x256 PNG pair, one question",
              "runs": []}
    for callers, cap in [(1, 1)] + [(threads, cap) for cap in caps]:
        detector = ReasonCDChangeDetectionPipeline(model=model, processor=processor, tokenizer=processor.tokenizer,
                                                   device=model.device, max_concurrent=cap)
        detector(requests[0], max_new_tokens=max_new_tokens)  # warm-up

        def serve(caller: int) -> list[float]:
            latencies = []
            for k in range(requests_per_thread):
                start = time.perf_counter()
                detector(requests[(caller + k) % len(requests)], max_new_tokens=max_new_tokens)
                latencies.append(time.perf_counter() - start)
            return latencies

        memory = PeakMemory()
        with memory.watch():
            start = time.perf_counter()
            with ThreadPoolExecutor(callers) as pool:
                latencies = [t for per_caller in pool.map(serve, range(callers)) for t in per_caller]
            seconds = time.perf_counter() - start
        print(f"[serve] {callers} threads, max_concurrent {cap}: {len(latencies) / seconds:.1f} requests/s",
              file=sys.stderr)
        report["runs"].append({
            "threads": callers, "max_concurrent": cap, "requests": len(latencies),
            "requests_per_s": round(len(latencies) / seconds, 2),
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 4),
            "latency_p95_s": round(float(np.percentile(latencies, 95)), 4),
            "peak_rss_mib": round(memory.peak_mib, 1),
        })
    return report


def serve_table(report: dict) -> str:
    lines = ["| threads | max_concurrent | requests/s | p50 latency | p95 latency | peak RSS |",
             "|---:|---:|---:|---:|---:|---:|"]
    for run in report["runs"]:
        lines.append(f"| {run['threads']} | {run['max_concurrent']} | {run['requests_per_s']} | "
                     f"{run['latency_p50_s'] * 1000:.0f} ms | {run['latency_p95_s'] * 1000:.0f} ms | "
                     f"{run['peak_rss_mib'] / 1024:.2f} GiB |")
    return "\n".join(lines)


def bench_quickstart(output_dir: Path, fresh_data: bool) -> dict:
    """Times the whole quickstart (data generation if absent, build, train, test evaluation, figures)."""
    if fresh_data:
        import shutil

        from reasoncd.data.second import CONVERTER
        from reasoncd.data.synthetic import GENERATOR
        from reasoncd.io import written_only_by

        # Only the quickstart's caches (data/synthetic/{second,samples}-PAIRS-seed0), and only where their marker
        # says the generator or converter wrote everything in them: never a user's files of the same name.
        for folder in (REPO / "data" / "synthetic").glob("*-seed0"):
            if folder.name.startswith(("second-", "samples-")) and written_only_by(folder, (GENERATOR, CONVERTER)):
                shutil.rmtree(folder)
            elif folder.name.startswith(("second-", "samples-")):
                print(f"kept {folder}: it holds files the quickstart did not write", file=sys.stderr)
    start = time.perf_counter()
    # --overwrite: the benchmark starts its own earlier run over each time.
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--output_dir", str(output_dir), "--overwrite"],
                            cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"train.py failed with exit code {result.returncode}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {
        "quickstart_seconds": round(seconds, 1),
        "fresh_data": fresh_data,
        "test_f1": metrics["f1"],
        "groups_f1": {name: group["f1"] for name, group in metrics["groups"].items()},
        "text": metrics["text"],
        "steering": metrics["steering"],
    }


def bench_baseline(seconds: float | None, seeds: list[int], pairs: int, train_sample: int) -> dict:
    """The specialist baseline on the quickstart's data: per seed, test and training-sample figures."""
    sys.path.insert(0, str(REPO))
    from reasoncd.data.samples import load_split, training_sample
    from reasoncd.evaluation.scoring import score
    from reasoncd.evaluation.specialist import predict_specialist, train_specialist
    from reasoncd.training.recipes import prepare_quickstart_data

    if seconds is None:
        earlier = REPO / "runs" / "bench-quickstart.json"
        seconds = json.loads(earlier.read_text())["quickstart"]["quickstart_seconds"] if earlier.is_file() else 600.0
    data = prepare_quickstart_data(REPO, pairs, 0)
    train_samples, test_samples = load_split(data, "train"), load_split(data, "test")
    seen = training_sample(train_samples, train_sample)
    runs = []
    for seed in seeds:
        network, trained = train_specialist(train_samples, seconds, seed=seed)
        figures = {"seed": seed, **trained}
        for split, samples in (("test", test_samples), ("train", seen)):
            result = score(samples, predict_specialist(network, samples))
            figures[split] = {key: value for key, value in result.items() if key != "per_sample"}
            figures[split]["n_samples"] = len(samples)
        runs.append(figures)
    return {"budget_seconds": seconds, "pairs": pairs, "runs": runs}


def baseline_table(report: dict) -> str:
    from reasoncd.evaluation.report import split_figures

    runs = report["runs"]
    header = [f"{split} seed {run['seed']}" for run in runs for split in ("test", "train")]
    lines = ["| specialist | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    columns = [dict(split_figures(run[split])) for run in runs for split in ("test", "train")]
    for name in columns[0]:
        cells = ("–" if c[name] is None else f"{c[name]:.3f}" for c in columns)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| steps (seconds) | " + " | ".join(f"{run['steps']} ({run['seconds']} s)" for run in runs
                                                  for _ in ("test", "train")) + " |")
    return "\n".join(lines)


PROXY_FLAGS = ["--max_val_samples", "32", "--max_eval_samples", "154", "--train_eval_samples", "60",
               "--synthetic_seed", "0"]


def mean_and_spread(figures: list[dict]) -> dict:
    """Each figure's mean and spread (max - min) over runs (`figures`: one `split_figures` dict per run); None for
    a figure no run measured."""
    summary = {}
    for figure in figures[0]:
        values = [run[figure] for run in figures if run[figure] is not None]
        summary[figure] = None if not values else {"mean": float(np.mean(values)),
                                                   "spread": float(max(values) - min(values))}
    return summary


def bench_proxy(variants: dict[str, str], seeds: list[int], steps: int) -> dict:
    """Short train.py runs per variant and seed; each figure's mean and spread (max - min) over seeds."""
    sys.path.insert(0, str(REPO))
    from reasoncd.evaluation.report import split_figures

    results = {}
    for name, flags in variants.items():
        runs = []
        for seed in seeds:
            output = REPO / "runs" / f"proxy-{name}-seed{seed}"
            start = time.perf_counter()
            command = [sys.executable, str(REPO / "train.py"), "--output_dir", str(output), "--overwrite",
                       "--seed", str(seed), "--max_steps", str(steps), "--eval_steps", str(steps), *PROXY_FLAGS,
                       *flags.split()]
            done = subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode != 0:
                raise SystemExit(f"proxy {name} seed {seed}: train.py failed with exit code {done.returncode}")
            metrics = json.loads((output / "metrics.json").read_text())
            runs.append({"seed": seed, "seconds": round(time.perf_counter() - start, 1),
                         "test": dict(split_figures(metrics)), "train": dict(split_figures(metrics["train_split"]))})
        summary = {split: mean_and_spread([run[split] for run in runs]) for split in ("test", "train")}
        results[name] = {"flags": flags, "runs": runs, "summary": summary}
    return {"steps": steps, "seeds": seeds, "variants": results}


def proxy_table(report: dict) -> str:
    names = list(report["variants"])
    header = [f"{name} {split}" for name in names for split in ("test", "train")]
    lines = [f"| {report['steps']} steps, seeds {report['seeds']}: mean ± spread | " + " | ".join(header) + " |",
             "|---|" + "---:|" * len(header)]
    first = report["variants"][names[0]]["summary"]["test"]
    for figure in first:
        cells = []
        for name in names:
            for split in ("test", "train"):
                value = report["variants"][name]["summary"][split][figure]
                cells.append("–" if value is None else f"{value['mean']:.3f} ± {value['spread']:.3f}")
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The decision set: synthetic pairs no quickstart trains on (another seed), five times the test split's questions.
DECISION_PAIRS, DECISION_SEED = 1000, 7


def bench_decide(variants: dict[str, list[Path]], pairs: int, seed: int) -> dict:
    """Trained models (several seeds per variant) scored by eval.py's code, free generation, on the validation and
    test splits of a synthetic set drawn with `seed` (pairs no quickstart saw), pooled; each figure's mean and spread
    (max - min) over a variant's models."""
    sys.path.insert(0, str(REPO))
    from reasoncd.evaluation.report import split_figures
    from reasoncd.evaluation.scoring import predict_samples, score
    from reasoncd.data.samples import load_split
    from reasoncd.loading import check_checkpoint, load_model
    from reasoncd.training.recipes import prepare_quickstart_data

    for models in variants.values():
        for model in models:
            check_checkpoint(model)  # every folder before the first hour of scoring
    data = prepare_quickstart_data(REPO, pairs, seed)
    samples = load_split(data, "val") + load_split(data, "test")
    results = {}
    for name, models in variants.items():
        runs = []
        for model in models:
            network, processor = load_model(model)
            result = score(samples, predict_samples(network, processor, samples))
            runs.append({"model": str(model), "figures": dict(split_figures(result)),
                         "by_phrasing": {part: dict(split_figures(figures))
                                         for part, figures in result["by_phrasing"].items()}})
        results[name] = {"runs": runs, "summary": mean_and_spread([run["figures"] for run in runs]),
                         "by_phrasing": {part: mean_and_spread([run["by_phrasing"][part] for run in runs])
                                         for part in runs[0]["by_phrasing"]}}
    absent = sum("[SEG]" not in sample["answer"] for sample in samples)
    return {"data": str(data), "n_questions": len(samples), "n_absent": absent, "variants": results}


def decide_table(report: dict) -> str:
    """Each variant's figures (mean ± spread over its models) in a column; then each variant's on the questions in
    seen and in held-out phrasings, a column each."""
    from reasoncd.evaluation.report import PHRASING_TITLES

    variants = report["variants"]
    columns = {f"{name} ({len(variant['runs'])})": variant["summary"] for name, variant in variants.items()}
    parts = {f"{name}, {PHRASING_TITLES[part]}": summary for name, variant in variants.items()
             for part, summary in variant.get("by_phrasing", {}).items()}
    tables = [spread_table(f"{report['n_questions']} questions ({report['n_absent']} absent): mean ± spread", columns)]
    if parts:
        tables.append(spread_table("the same questions by phrasing: mean ± spread", parts))
    return "\n\n".join(tables)


def spread_table(title: str, columns: dict[str, dict]) -> str:
    """A GitHub table of figures (rows) by column, each cell a `mean_and_spread` entry."""
    lines = [f"| {title} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for figure in next(iter(columns.values())):
        cells = [column[figure] for column in columns.values()]
        lines.append(f"| {figure} | " + " | ".join("–" if v is None else f"{v['mean']:.3f} ± {v['spread']:.3f}"
                                                   for v in cells) + " |")
    return "\n".join(lines)


def validation_history(run: Path) -> list[float]:
    """The validation fidelity scores of a train.py run, in order: its newest checkpoint's log history."""
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]))
    if not checkpoints:
        raise SystemExit(f"{run}: no checkpoints/checkpoint-* folder (a train.py --output_dir)")
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return [entry["eval_fidelity_score"] for entry in state["log_history"] if "eval_fidelity_score" in entry]


def ranks(values) -> np.ndarray:
    """Ranks from 0, ties given their mean rank (what Spearman's correlation ranks)."""
    values = np.asarray(values, dtype=float)
    order = values.argsort(kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values))
    for value in np.unique(values):
        ranked[values == value] = ranked[values == value].mean()
    return ranked


def bench_agreement(runs: list[Path], margin: float) -> dict:
    """
    How well each validation of full quickstart runs ranks them as their final test fidelity does: per validation
    (every --eval_steps), Spearman's correlation over the runs and the share of run pairs whose test fidelity differs
    by more than `margin` that the validation ranks the same way. A short run stopped at validation k ranks variants
    only as well as validation k of a full run does (the learning-rate schedule aside).
    """
    if len(runs) < 3:
        raise SystemExit(f"agreement: give at least 3 runs, got {len(runs)}")
    histories, tests = {}, {}
    for run in runs:
        metrics = run / "metrics.json"
        if not metrics.is_file():
            raise SystemExit(f"{run}: no metrics.json (a finished train.py --output_dir)")
        tests[str(run)] = json.loads(metrics.read_text())["fidelity_score"]
        histories[str(run)] = validation_history(run)
    validations = min(len(history) for history in histories.values())
    names = list(tests)
    test = np.array([tests[name] for name in names])
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names)) if abs(test[i] - test[j]) > margin]
    rows = []
    for k in range(validations):
        value = np.array([histories[name][k] for name in names])
        rho = float(np.corrcoef(ranks(value), ranks(test))[0, 1])
        alike = sum(bool((value[i] - value[j]) * (test[i] - test[j]) > 0) for i, j in pairs)
        rows.append({"validation": k + 1, "spearman": rho, "pairs_ranked_alike": alike, "pairs": len(pairs)})
    return {"runs": {name: {"test_fidelity": tests[name], "validation_fidelity": histories[name]} for name in names},
            "margin": margin, "per_validation": rows}


def agreement_table(report: dict) -> str:
    lines = [f"| validation ({len(report['runs'])} runs) | Spearman with the test fidelity | run pairs ranked alike "
             f"(test gap > {report['margin']}) |", "|---:|---:|---:|"]
    for row in report["per_validation"]:
        share = row["pairs_ranked_alike"] / row["pairs"] if row["pairs"] else float("nan")
        lines.append(f"| {row['validation']} | {row['spearman']:.2f} | {row['pairs_ranked_alike']}/{row['pairs']} "
                     f"({share:.2f}) |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- whole scenes

SCENE_CRS = "EPSG:32650"  # WGS 84 / UTM zone 50N: metres
SCENE_PIXEL_M = 0.5
SCENE_PAIR = 256  # side of the generated pairs the scenes are assembled from
SCENE_FOLDER = REPO / "runs" / "bench-scene"
_SCENE_LINE = re.compile(r"(\d+) tiles, (\d+) through the model in this run \(([\d.]+) tiles/s\), ([\d.]+) s in all "
                         r"\(tiles ([\d.]+) s, blending ([\d.]+) s, rasters and polygons ([\d.]+) s\)")


def write_synthetic_scene(folder: Path, size: int, seed: int = 0) -> tuple[Path, Path]:
    """T1 and T2 GeoTIFFs of size x size pixels, a mosaic of the generator's pairs written window by window (never
    whole in memory); reused when already written."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    from tqdm import tqdm

    from reasoncd.data.synthetic import synthesize_pair
    from reasoncd.io import atomic_path

    paths = (folder / f"scene-{size}-seed{seed}-t1.tif", folder / f"scene-{size}-seed{seed}-t2.tif")
    if all(path.is_file() for path in paths):
        return paths
    per_side = size // SCENE_PAIR
    profile = {"driver": "GTiff", "width": per_side * SCENE_PAIR, "height": per_side * SCENE_PAIR, "count": 3,
               "dtype": "uint8", "crs": SCENE_CRS, "tiled": True, "blockxsize": 256, "blockysize": 256,
               "transform": from_origin(500000.0, 4000000.0, SCENE_PIXEL_M, SCENE_PIXEL_M), "photometric": "RGB"}
    with atomic_path(paths[0]) as temporary_t1, atomic_path(paths[1]) as temporary_t2:
        with rasterio.open(temporary_t1, "w", **profile) as t1, rasterio.open(temporary_t2, "w", **profile) as t2:
            for index in tqdm(range(per_side * per_side), desc=f"synthetic {size}² scene", unit="pair"):
                pair = synthesize_pair(index, seed=seed, size=SCENE_PAIR)
                row, col = divmod(index, per_side)
                window = Window(col * SCENE_PAIR, row * SCENE_PAIR, SCENE_PAIR, SCENE_PAIR)
                t1.write(np.moveaxis(pair.image1, -1, 0), window=window)
                t2.write(np.moveaxis(pair.image2, -1, 0), window=window)
    return paths


def seg_answering_checkpoint(preset: str) -> Path:
    """A random `preset` model whose language model always answers [SEG], saved once."""
    from reasoncd.build import build_tiny, make_seg_the_only_answer, save_checkpoint

    folder = SCENE_FOLDER / f"model-{preset}-seg"
    if not (folder / "model.safetensors").is_file():
        model, processor = build_tiny(0, preset=preset)
        make_seg_the_only_answer(model)
        save_checkpoint(model, processor, folder, command="bench.py scene", overwrite=True)
    return folder


def run_predict_scene(arguments: list[str], log: Path) -> dict:
    """predict_scene.py in a child process; its peak resident memory from the kernel once it has ended."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, str(REPO / "predict_scene.py"), *arguments, "--no_progress"],
                                   cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    text = log.read_text()
    if process.returncode != 0:
        raise SystemExit(f"predict_scene.py failed ({process.returncode}); see {log}:\n{text[-2000:]}")
    tiles, _, rate, inside, tiling, blending, writing = _SCENE_LINE.search(text).groups()
    return {"tiles": int(tiles), "tiles_per_s": float(rate), "command_seconds": round(seconds, 1),
            "seconds_after_loading": float(inside), "tiles_seconds": float(tiling), "blending_seconds": float(blending),
            "writing_seconds": float(writing), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def bench_scene(sizes: list[int], presets: list[str], medium_sizes: list[int], batch_size: int,
                threshold: float = 0.5) -> dict:
    """predict_scene.py on each size with each preset (medium only on `medium_sizes`: it is slow on a CPU)."""
    SCENE_FOLDER.mkdir(parents=True, exist_ok=True)
    report = {}
    for preset in presets:
        model = seg_answering_checkpoint(preset)
        for size in sizes:
            if preset == "medium" and size not in medium_sizes:
                continue
            t1, t2 = write_synthetic_scene(SCENE_FOLDER, size)
            name = f"{preset}-{size}" + (f"-threshold{threshold:g}" if threshold != 0.5 else "")
            output = SCENE_FOLDER / f"out-{name}"
            left = output.parent / f".{output.name}.resume"  # an earlier interrupted run would be resumed
            if left.is_dir() and _written_by(left / "run.json", "predict_scene.py"):
                shutil.rmtree(left)  # only a resume folder predict_scene.py itself left
            print(f"[scene] {preset}, {size}x{size}", file=sys.stderr)
            result = run_predict_scene(
                ["--model", str(model), "--t1", str(t1), "--t2", str(t2), "--question", QUESTIONS[0],
                 "--output_dir", str(output), "--overwrite", "--batch_size", str(batch_size),
                 "--max_new_tokens", "8", "--threshold", str(threshold)], SCENE_FOLDER / f"log-{name}.txt")
            summary = json.loads((output / "summary.json").read_text())
            answered = summary["questions"][0]
            result.update({"tile_size": summary["tiles"]["size"], "overlap": summary["tiles"]["overlap"],
                           "polygons": answered["polygons"], "changed_fraction": round(
                               answered["changed_pixels"] / (summary["scene"]["width"] * summary["scene"]["height"]), 3),
                           "output_mib": round(sum(p.stat().st_size for p in output.iterdir()) / 2**20, 1)})
            report[name] = result
    return report


def scene_table(report: dict) -> str:
    lines = ["| preset | scene | tiles | tiles/s | tiles / blending / rasters and polygons | command | polygons | peak RSS |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for name, r in report.items():
        preset, size = name.split("-")[:2]
        preset += f" (threshold {name.split('threshold')[1]})" if "threshold" in name else ""
        lines.append(f"| {preset} | {size}² | {r['tiles']} | {r['tiles_per_s']:.2f} | {r['tiles_seconds']:.0f} s / "
                     f"{r['blending_seconds']:.0f} s / {r['writing_seconds']:.0f} s | {r['command_seconds']:.0f} s | "
                     f"{r['polygons']:,} | {r['peak_rss_mib'] / 1024:.2f} GiB |")
    return "\n".join(lines)


def scene_figure(model: Path, question: str, size: int, target: Path) -> dict:
    """predict_scene.py on a synthetic scene, drawn: T1, T2, and T2 under the probability map and the polygons."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.collections import PolyCollection

    from reasoncd.io import atomic_path

    SCENE_FOLDER.mkdir(parents=True, exist_ok=True)
    t1, t2 = write_synthetic_scene(SCENE_FOLDER, size, seed=7)
    output = SCENE_FOLDER / "figure"
    result = run_predict_scene(["--model", str(model), "--t1", str(t1), "--t2", str(t2), "--question", question,
                                "--output_dir", str(output), "--overwrite"], SCENE_FOLDER / "log-figure.txt")
    summary = json.loads((output / "summary.json").read_text())
    files = summary["questions"][0]["files"]
    with rasterio.open(t1) as first, rasterio.open(t2) as second, \
            rasterio.open(output / files["probability"]) as probability:
        bounds = first.bounds
        extent = (0, bounds.right - bounds.left, 0, bounds.top - bounds.bottom)  # metres from the corner
        images = [np.moveaxis(d.read(), 0, -1) for d in (first, second)]
        chance = probability.read(1, masked=True).astype(np.float64) * probability.scales[0]
    import shapely
    from pyogrio.raw import read as read_layer

    geometries = shapely.from_wkb(read_layer(output / files["gpkg"])[2])  # in the scene's CRS (the GeoJSON: WGS 84)
    features = list(geometries)
    outlines = [np.asarray(polygon.exterior.coords) - (bounds.left, bounds.bottom) for polygon in geometries]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.3), constrained_layout=True)
    for axis, image, title in zip(axes, images + [images[1]], ["T1", "T2", "T2, probability and polygons"]):
        axis.imshow(image, extent=extent)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("m east", fontsize=8)
        axis.tick_params(labelsize=7)
    shown = axes[2].imshow(np.ma.masked_less(chance, 0.05), cmap="magma", vmin=0, vmax=1, alpha=0.6, extent=extent)
    axes[2].add_collection(PolyCollection(outlines, facecolors="none", edgecolors="cyan", linewidths=0.8))
    axes[0].set_ylabel("m north", fontsize=8)
    figure.colorbar(shown, ax=axes[2], fraction=0.046, label="change probability")
    figure.suptitle(f"predict_scene.py, question \"{question}\": {summary['questions'][0]['answer']} "
                    f"({len(features)} polygons, {summary['questions'][0]['changed_area_m2']:.0f} m²)", fontsize=10)
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=110, format="jpg", pil_kwargs={"quality": 85})
    plt.close(figure)
    return {**result, "figure": str(target), "figure_kib": round(target.stat().st_size / 1024, 1)}



def _written_by(record: Path, command: str) -> bool:
    """Whether `record` (a run's JSON record) names `command` as the program that wrote its folder."""
    try:
        found = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and found.get("command") == command

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed", help="sessions, KV cache, feature cache, tiles (one process)")
    speed.add_argument("--presets", nargs="+", default=["tiny", "medium"])
    speed.add_argument("--model", type=Path, default=REPO / "runs" / "quickstart" / "model",
                       help="trained tiny model to use for the tiny preset (realistic answer lengths)")
    speed.add_argument("--max_new_tokens", type=int, default=32)
    speed.add_argument("--bf16", action="store_true", help="bf16 autocast (for a GPU run)")
    memory = sub.add_parser("memory", help="memory plan of the 7B configuration (from parameter counts) and the "
                                  "training FLOPs the feature cache can save, per preset (counted on the meta device)")
    memory.add_argument("--measure", metavar="PRESET", nargs="?", const="medium",
                        help="also load a saved random PRESET checkpoint (default medium) in bf16, 8-bit and 4-bit "
                             "(needs bitsandbytes) and compare its footprint with the plan's arithmetic")
    serve = sub.add_parser("serve", help="the change-detection pipeline answering concurrent threads (tiny preset)")
    serve.add_argument("--model", type=Path, default=None,
                       help="a trained tiny model (default: the random tiny preset)")
    serve.add_argument("--threads", type=int, default=8)
    serve.add_argument("--requests_per_thread", type=int, default=10)
    serve.add_argument("--max_new_tokens", type=int, default=16)
    serve.add_argument("--max_concurrent", type=int, nargs="+", default=[1, 2, 8],
                       help="decoding caps to compare under --threads callers")
    quick = sub.add_parser("quickstart", help="time `python train.py` end to end")
    quick.add_argument("--output_dir", type=Path, default=REPO / "runs" / "bench-quickstart")
    quick.add_argument("--keep_data", action="store_true", help="reuse an already generated synthetic set")
    baseline = sub.add_parser("baseline", help="a specialist without language on the quickstart's data and time")
    baseline.add_argument("--seconds", type=float, help="training budget per seed (default: the last quickstart "
                          "benchmark's time, else 600)")
    baseline.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    baseline.add_argument("--pairs", type=int, default=360, help="synthetic pairs (the quickstart's)")
    baseline.add_argument("--train_sample", type=int, default=160,
                          help="questions of the training split scored beside the test split (train.py's sample)")
    proxy = sub.add_parser("proxy", help="short train.py runs per variant and seed: mean and spread")
    proxy.add_argument("--variant", action="append", required=True, metavar="NAME=FLAGS",
                       help='a name and the train.py flags of one variant, e.g. no-presence="--no-presence_head"')
    proxy.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    proxy.add_argument("--steps", type=int, default=150)
    decide = sub.add_parser("decide", help="trained models, several seeds per variant, scored on a larger synthetic "
                            "set no quickstart trains on (the test split is too small to rank variants)")
    decide.add_argument("--variant", action="append", required=True, metavar="NAME=MODEL[,MODEL...]",
                        help="a name and its trained models (train.py's model/ folders), e.g. "
                        "base=runs/a/model,runs/b/model")
    decide.add_argument("--pairs", type=int, default=DECISION_PAIRS)
    decide.add_argument("--data_seed", type=int, default=DECISION_SEED,
                        help="the synthetic set's seed (the quickstart's are the model seeds: 0 and up)")
    agreement = sub.add_parser("agreement", help="how well each validation of finished quickstart runs ranks them "
                               "as their test fidelity does (what a shorter proxy run could tell)")
    agreement.add_argument("runs", type=Path, nargs="+", help="train.py output folders (metrics.json, checkpoints/)")
    agreement.add_argument("--margin", type=float, default=0.03,
                           help="run pairs whose test fidelity differs by at most this are not counted")
    scene = sub.add_parser("scene", help="predict_scene.py on synthetic GeoTIFF scenes: tiles/s and peak memory")
    scene.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    scene.add_argument("--presets", nargs="+", default=["tiny", "medium"])
    scene.add_argument("--medium_sizes", type=int, nargs="+", default=[2048],
                       help="sizes the medium preset runs on (8192² takes over 20 minutes on 2 CPU cores)")
    scene.add_argument("--batch_size", type=int, default=8)
    scene.add_argument("--threshold", type=float, default=0.5,
                       help="e.g. 0.999: no pixel is change, so no polygons (the memory of everything else)")
    widths = sub.add_parser("paper-widths", help="reasoncd-7b's widths at depth 2: a LoRA step and generate, "
                                                 "fp32 and bf16 (seconds, peak memory)")
    widths.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    figure = sub.add_parser("scene-figure", help="docs/scene-example.jpg: a scene's probability map and polygons")
    figure.add_argument("--model", type=Path, default=REPO / "runs" / "quickstart" / "model")
    figure.add_argument("--question", default="new buildings")
    figure.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)

    report = {"machine": machine()}
    if args.command == "speed":
        report["speed"] = bench_speed(args.presets, args.model, args.max_new_tokens, bf16=args.bf16)
        table = speed_table(report["speed"])
    elif args.command == "memory":
        report["memory"] = memory_plan()
        report["compute"] = compute_plan()
        if args.measure:
            report["footprint_check"] = measured_footprints(args.measure)
        table = compute_table(report["compute"])
    elif args.command == "serve":
        report["serve"] = bench_serve(args.model, args.threads, args.requests_per_thread, args.max_new_tokens,
                                      args.max_concurrent)
        table = serve_table(report["serve"])
    elif args.command == "scene":
        report["scene"] = bench_scene(args.sizes, args.presets, args.medium_sizes, args.batch_size,
                                      args.threshold)
        table = scene_table(report["scene"])
    elif args.command == "baseline":
        report["baseline"] = bench_baseline(args.seconds, args.seeds, args.pairs, args.train_sample)
        table = baseline_table(report["baseline"])
    elif args.command == "proxy":
        variants = dict(item.partition("=")[::2] for item in args.variant)
        report["proxy"] = bench_proxy(variants, args.seeds, args.steps)
        table = proxy_table(report["proxy"])
    elif args.command == "decide":
        variants = {name: [Path(model) for model in models.split(",")]
                    for name, models in (item.partition("=")[::2] for item in args.variant)}
        report["decide"] = bench_decide(variants, args.pairs, args.data_seed)
        table = decide_table(report["decide"])
    elif args.command == "agreement":
        report["agreement"] = bench_agreement(args.runs, args.margin)
        table = agreement_table(report["agreement"])
    elif args.command == "paper-widths":
        report["paper_widths"] = bench_paper_widths(args.dtypes)
        table = paper_widths_table(report["paper_widths"])
    elif args.command == "scene-figure":
        report["scene_figure"] = scene_figure(args.model, args.question, args.size, REPO / "docs" / "scene-example.jpg")
        table = None
    else:
        report["quickstart"] = bench_quickstart(args.output_dir, fresh_data=not args.keep_data)
        table = None
    print(json.dumps(report, indent=2))
    if table:
        print(f"\nmachine: {report['machine']['cpu_cores']} cores, {report['machine']['torch_threads']} torch threads, "
              f"CUDA: {report['machine']['cuda']}\n{table}")
    out = REPO / "runs" / f"bench-{args.command}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
