"""reasoncd.training.arguments: the TrainingArguments train.py's flags make (gradient accumulation makes up
--batch_size; a validation and a checkpoint every --eval_steps)."""
import pytest

from reasoncd.training.arguments import argument_problem, build_parser, training_arguments
from reasoncd.training.recipes import apply_recipe


def args_for(tmp_path, *argv: str):
    args = build_parser("train.py").parse_args(["--data", str(tmp_path), "--output_dir", str(tmp_path / "run"),
                                                *argv])
    apply_recipe(args, tmp_path)
    assert argument_problem(args) is None
    return args


@pytest.mark.parametrize("batch, per_device, accumulation", [("16", "4", 4), ("5", "2", 3), ("2", "4", 1)])
def test_accumulation_makes_up_the_batch(tmp_path, batch, per_device, accumulation):
    made = training_arguments(args_for(tmp_path, "--batch_size", batch, "--per_device_train_batch_size", per_device))
    assert made.gradient_accumulation_steps == accumulation
    assert made.per_device_train_batch_size == int(per_device)


def test_checkpoints_and_validation_every_eval_steps(tmp_path):
    made = training_arguments(args_for(tmp_path, "--eval_steps", "6", "--seed", "3", "--learning_rate", "2e-4"))
    assert made.output_dir == str(tmp_path / "run" / "checkpoints")
    assert (made.eval_steps, made.save_steps, made.logging_steps) == (6, 6, 1)
    assert made.metric_for_best_model == "fidelity_score" and made.load_best_model_at_end
    assert (made.seed, made.learning_rate, made.num_train_epochs) == (3, 2e-4, 100)
