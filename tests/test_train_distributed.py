"""Two CPU processes (torchrun, gloo), one of which sees only questions about absent changes (no mask to learn from):
with plain DDP, DeepSpeed ZeRO-2 and ZeRO-3, all train to the end and the mask path learns from the other process's
masks. A batch without [SEG] still runs the mask path (weighted zero), so every process reduces gradients for the
same parameters; without that, ZeRO-2 aborts with a collective mismatch after the first step. (Plain DDP copes either
way: the Trainer has it search each step's graph for unused parameters, as for any PEFT model.)"""
import json
import os
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from helpers import REPO_ROOT, script_env
from reasoncd.build import build_tiny
from reasoncd.data.samples import SEG, group_by_pair, load_split
from training_helpers import answers_with_a_mask, differing_tensors, free_port, training_data

STEPS = 3
PAIRS_PER_RANK = STEPS  # one pair per process and step; sequential order, so rank r takes rows r, r+2, r+4, ...
LAUNCH_TIMEOUT = 600


def _absent_only_on_rank_one(samples_dir, target):
    """A data set whose training pairs alternate: a pair with masks (for rank 0), a pair whose questions are all
    about absent changes (for rank 1). Files are named so that their sorted order is that alternation."""
    pairs = group_by_pair(load_split(samples_dir, "train"))
    with_masks = [p for p in pairs if any(SEG in answer for answer in p["answers"])]
    absent = [p for p in pairs if any(SEG not in answer for answer in p["answers"])]
    absent = [p for p in absent if p not in with_masks[:PAIRS_PER_RANK]][:PAIRS_PER_RANK]
    with_masks = [p for p in with_masks if p not in absent][:PAIRS_PER_RANK]
    assert len(with_masks) == len(absent) == PAIRS_PER_RANK, "the synthetic set has too few pairs of each kind"
    samples = {s["source"]: s for s in load_split(samples_dir, "train")}
    for index, pair in enumerate(p for both in zip(with_masks, absent) for p in both):
        kept = [s for s in samples.values() if s["img1_path"] == pair["img1_path"]
                and (index % 2 == 0 or SEG not in s["answer"])]
        for number, sample in enumerate(kept):
            (target / "train").mkdir(parents=True, exist_ok=True)
            (target / "train" / f"{index:02d}-{number}.json").write_text(json.dumps(sample))
    (target / "val").mkdir()
    for number, sample in enumerate(load_split(samples_dir, "val")):  # paths made absolute by load_split
        (target / "val" / f"{number:02d}.json").write_text(json.dumps(sample))
    return target


def _launch(data, run, record, *extra, timeout=LAUNCH_TIMEOUT):
    """torchrun with two CPU processes; the whole process group is killed if it outlives `timeout`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(REPO_ROOT / "tests" / "distributed_train_driver.py"),
               str(record), "--data", str(data), "--output_dir", str(run), "--max_steps", str(STEPS),
               "--eval_steps", str(STEPS), "--per_device_train_batch_size", "1", "--batch_size", "2",
               "--train_sampling_strategy", "sequential", "--learning_rate", "1e-3", "--warmup_steps", "0",
               "--max_val_samples", "2", "--skip_test", "--feature_cache", "off", *extra]
    env = {k: v for k, v in script_env({"OMP_NUM_THREADS": "1"}).items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"two-process training still running after {timeout} s (a collective waiting for a peer?):\n"
                    + output[-4000:])
    return process.returncode, output


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    return _absent_only_on_rank_one(training_data(tmp_path_factory), tmp_path_factory.mktemp("split") / "samples")


@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_a_process_with_only_absent_questions_trains_with_the_others(engine, split_data, tmp_path):
    run, record = tmp_path / "run", tmp_path / "record"
    extra = ["--deepspeed", str(REPO_ROOT / "configs" / f"ds_{engine}.json")] if engine.startswith("zero") else []
    code, output = _launch(split_data, run, record, *extra)
    assert code == 0, output[-6000:]

    # The data arrangement held: rank 1 never had a mask to learn from, rank 0 had one in every batch.
    batches = {rank: [json.loads(line) for line in (record / f"rank-{rank}.jsonl").read_text().splitlines()]
               for rank in (0, 1)}
    assert len(batches[0]) == len(batches[1]) == STEPS
    assert all(not any(SEG in answer for answer in batch) for batch in batches[1])
    assert all(any(SEG in answer for answer in batch) for batch in batches[0])

    checkpoint = run / "checkpoints" / f"checkpoint-{STEPS}"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(1, STEPS + 1))
    # The mask path learned (from rank 0's masks, averaged with rank 1's zero gradients).
    adapter = load_file(str(checkpoint / "adapter_model.safetensors"))
    start, _ = build_tiny(0)  # train.py's model for its default --seed 0
    learned = {name: tensor for name, tensor in adapter.items()
               if name.startswith(("base_model.model.sam_mask_decoder.transformer", "base_model.model.text_hidden_fc"))}
    assert learned
    initial = {name: start.state_dict()[name.removeprefix("base_model.model.")] for name in learned}
    assert differing_tensors(learned, initial) == sorted(learned)
    # The merged model (under ZeRO-3 merged from gathered shards) reloads whole and answers with a mask.
    answers_with_a_mask(run / "model")
