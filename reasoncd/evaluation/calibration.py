"""The presence decision's threshold, placed on questions about pairs the model did not train on.

The presence head learns from training pairs, where it tells present from absent questions more surely than on new
pairs, and where absent questions are a minority: on new pairs absent questions get higher logits than in training,
so the head's own threshold (logit 0) answers too many of them with a mask. `calibrate_presence` reads the
validation split's logits (a teacher-forced pass: the decision reads the question up to `</p>`, before any answer
token, so these are the logits generation decides on) and returns the threshold of best balanced accuracy: the
mean of the present questions' share decided present and the absent questions' share decided absent, which weighs
the two kinds of mistake alike whatever their counts.
"""

from pathlib import Path

import numpy as np
import torch

from reasoncd.data.samples import SEG
from reasoncd.evaluation.scoring import batch_inputs, batches_by_pair, encode_batch


class CalibrationError(ValueError):
    """Questions that cannot place a threshold (none present, or none absent)."""


def check_presence_decision(model) -> None:
    """Refuses a model without a presence decision: it has no threshold to place."""
    if getattr(model, "presence", None) is None:
        raise CalibrationError("the model has no presence decision to calibrate (presence_head=False; build one with "
                               "--presence_head)")


def check_calibration_samples(samples: list[dict], where: str) -> None:
    """Refuses question sets without both present and absent questions, naming `where` they come from."""
    present = sum(SEG in sample["answer"] for sample in samples)
    if present == 0 or present == len(samples):
        kind = "absent" if present == len(samples) else "present"
        raise CalibrationError(f"{where}: {len(samples)} questions, none of them {kind}; placing the presence "
                               "threshold needs both questions whose change is there and questions whose change is "
                               "not (answers with and without [SEG])")


@torch.no_grad()
def presence_logits(model, processor, samples: list[dict], *, batch_size: int = 8,
                    progress: bool = True) -> np.ndarray:
    """Each question's presence logit `(N,)`, as generation reads it."""
    from tqdm.auto import tqdm

    check_presence_decision(model)
    model.eval()
    logits = np.zeros(len(samples), dtype=np.float64)
    bar = tqdm(total=len(samples), desc="presence logits", disable=not progress)
    for indices in batches_by_pair(samples, batch_size):
        inputs, _, _ = batch_inputs(model, processor, [samples[i] for i in indices], teacher_forced=True)
        inputs.pop("labels")
        outputs = model(**inputs, frozen_features=encode_batch(model, inputs))
        logits[indices] = outputs.presence_logits.float().cpu().numpy()
        bar.update(len(indices))
    bar.close()
    return logits


def decision_figures(logits: np.ndarray, present: np.ndarray, threshold: float) -> dict:
    """The share of present questions decided present, of absent ones decided absent, and their mean."""
    decided = logits > threshold
    recall, absent = float(decided[present].mean()), float((~decided[~present]).mean())
    return {"present_recall": recall, "absent_accuracy": absent, "balanced_accuracy": (recall + absent) / 2}


def balanced_threshold(logits: np.ndarray, present: np.ndarray) -> float:
    """The threshold of best balanced accuracy, halfway between two neighbouring logits; of equally good ones, the
    one nearest the head's own (0)."""
    ordered = np.unique(logits)
    candidates = np.concatenate([[ordered[0] - 1.0], (ordered[1:] + ordered[:-1]) / 2, [ordered[-1] + 1.0]])
    scores = np.array([decision_figures(logits, present, t)["balanced_accuracy"] for t in candidates])
    best = candidates[np.isclose(scores, scores.max())]
    return float(best[np.abs(best).argmin()])


def calibrate_presence(model, processor, samples: list[dict], *, where: str, batch_size: int = 8,
                       figure: Path | None = None, progress: bool = True) -> dict:
    """The threshold of best balanced accuracy on `samples` (`where`: their source, for errors) and the figures
    there at the head's own threshold (0) and at it; with `figure`, a PNG of the logits and of those figures against
    the threshold. Does not change the model."""
    check_calibration_samples(samples, where)
    logits = presence_logits(model, processor, samples, batch_size=batch_size, progress=progress)
    present = np.array([SEG in sample["answer"] for sample in samples])
    threshold = balanced_threshold(logits, present)
    if figure is not None:
        from reasoncd.evaluation.figures import presence_threshold_figure

        presence_threshold_figure(figure, logits, present, threshold, lambda t: decision_figures(logits, present, t))
    return {"threshold": threshold, "questions": len(samples), "absent_questions": int((~present).sum()),
            "at_head_threshold": decision_figures(logits, present, 0.0),
            "at_threshold": decision_figures(logits, present, threshold)}
