"""Same seed, same bits: two CPU trainings of train.py with one seed end with identical weights and logs."""
import json

from training_helpers import (STEPS, differing_tensors, final_weights, reference_training, run_training, train_args,
                              training_data)


def test_two_runs_with_one_seed_end_with_the_same_bits(tmp_path_factory, tmp_path):
    first = reference_training(tmp_path_factory)
    second = tmp_path / "run"
    run_training(train_args(training_data(tmp_path_factory), second))
    weights = final_weights(first)
    assert not differing_tensors(weights, final_weights(second))
    # Every logged loss and validation figure is the same number too.
    histories = [json.loads((run / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
                 for run in (first, second)]
    logged = [[{k: v for k, v in entry.items() if "runtime" not in k and "per_second" not in k}
               for entry in history["log_history"]] for history in histories]
    assert logged[0] == logged[1]
    # Not trivially equal: the weights moved (the validation loss changed) and every step was logged.
    assert len({entry["eval_loss"] for entry in logged[0] if "eval_loss" in entry}) > 1
    assert [entry["step"] for entry in logged[0] if "loss" in entry] == list(range(1, STEPS + 1))
