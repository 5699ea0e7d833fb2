"""reasoncd.evaluation.figures: the training curves show whether masks follow the question."""
from reasoncd.evaluation import figures


def test_training_curves_show_whether_masks_follow_the_question(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path, tight=True: drawn.setdefault("figure", fig))
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5, "eval_f1": 0.3, "eval_steering": 0.6,
               "eval_absent_accuracy": 0.9, "eval_question_sensitivity": 0.95, "eval_counterfactual_f1_drop": -0.02,
               "eval_fidelity_score": 0.46}]
    figures.training_curves(tmp_path / "curves.png", history)
    question_use = drawn["figure"].axes[3]
    labels = {line.get_label() for line in question_use.lines}
    assert labels == {"steering", "absent-CRoI accuracy", "question sensitivity (1 = ignored)",
                      "counterfactual F1 drop", "fidelity score (picks the best checkpoint)"}
    assert question_use.get_ylim()[0] < -0.02  # a negative drop stays in view
