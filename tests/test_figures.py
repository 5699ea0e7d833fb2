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


def test_each_target_is_painted_in_its_own_colour():
    import numpy as np

    from reasoncd.evaluation.figures import TARGET_COLOURS, overlay, overlay_targets

    image = np.full((4, 4, 3), 100, np.uint8)
    first, second = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    first[0, :2] = True
    second[0, 1:3] = True
    painted = overlay_targets(image, [first, second], alpha=0.5)
    expected = (0.5 * 100 + 0.5 * TARGET_COLOURS).astype(np.uint8)
    assert (painted[0, 0] == expected[0]).all() and (painted[0, 2] == expected[1]).all()
    assert (painted[0, 1] == expected[1]).all()  # where they overlap, the later target shows
    assert (painted[1:] == 100).all() and (painted[0, 3] == 100).all()
    assert np.array_equal(overlay(image, first, alpha=0.5), overlay_targets(image, [first], alpha=0.5))


def test_the_samples_figure_adds_a_question_about_several_changes(tmp_path, samples_dir):
    import numpy as np
    from PIL import Image

    from reasoncd.data.images import read_mask
    from reasoncd.data.samples import load_mask, load_split
    from reasoncd.evaluation.figures import _question_about_several_changes, samples_figure

    samples = load_split(samples_dir, "train")
    predictions = []
    for sample in samples:
        targets = [{"label": t["label"], "mask": read_mask(t["mask_path"])}
                   for t in sample.get("targets") or [] if t["present"]]
        predictions.append({"text": sample["answer"], "mask": load_mask(sample, (256, 256)), "targets": targets})
    def present(index):
        return sum(t["present"] for t in samples[index].get("targets") or [])

    # Two present targets or more, from the pair shown when it has such a question.
    several = [i for i in range(len(samples)) if present(i) >= 2]
    pair = [i for i, s in enumerate(samples) if s["pair_id"] == samples[several[-1]]["pair_id"]]
    assert _question_about_several_changes(samples, pair) in [i for i in several if i in pair]
    assert present(_question_about_several_changes(samples, [])) == max(map(present, range(len(samples))))

    singles = [i for i, s in enumerate(samples) if s["kind"] != "multi"]
    samples_figure([samples[i] for i in singles], [predictions[i] for i in singles], tmp_path / "single.png")
    samples_figure(samples, predictions, tmp_path / "both.png")
    with Image.open(tmp_path / "single.png") as single, Image.open(tmp_path / "both.png") as both:
        assert both.height > single.height  # one more row: the question about several changes
