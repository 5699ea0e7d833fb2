"""Running a model over samples and scoring it: the paper's pixel metrics plus the reasoning breakdown.

Groups: `explicit`, `implicit_seen`, `implicit_heldout`, `explanation`, `absent`, `multi` (from the samples'
metadata; a question about several changes is scored on the union of its masks there, and target by target under
`multi_target`: reasoncd.evaluation.targets).
Text figures: `[SEG]` emission rate where the CRoI is present, absent-CRoI accuracy (no `[SEG]` where absent), and
steering: on pairs where another CRoI changed elsewhere, the share of masks closer (IoU) to the asked CRoI's truth.

Question use (a model that draws the same map whatever it is asked can still score a fair F1 where one change
dominates; these figures expose it):

* question sensitivity: on pairs asked about two or more present CRoIs whose truths differ, the mean IoU between
  the masks predicted for two such questions (1.0: the question is ignored; a perfect model scores the mean IoU of
  the truths, reported beside it);
* counterfactual: each `[SEG]` state decoded over its pair again, but for another question of that pair (one with
  a different truth); the F1 this loses against each row's own truth (about 0: the mask decoder ignores its prompt);
* fidelity score: the mean of F1, steering, absent-CRoI accuracy and 1 - question sensitivity (those measured; F1
  always is), each in [0, 1]. It falls when the question is ignored or an absent CRoI gets a mask, so training picks
  its best checkpoint by it rather than by F1 alone.

Order and consistency (free generation):

* order accuracy: each increase or decrease question is asked again with T1 and T2 swapped, where its truth becomes
  the opposite direction's; the share of those whose map is closer (IoU) to the swapped truth than to the unswapped
  one (questions whose two truths are equal take no part). A model that cannot tell T1 from T2 scores about 0.
* answer/map agreement: the share of answers whose words (a change named, or one of the absent sentences) agree with
  the map (non-empty, or empty).
"""

import hashlib
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from modeling_reasoncd import ANSWER_DECISION_TOKENS, per_prompt
from reasoncd.data.images import read_mask
from reasoncd.evaluation.metrics import ChangeMetrics, Steering, mask_iou
from reasoncd.data.questions import MULTI_KIND, says_absent
from reasoncd.data.samples import SEG, load_images, load_mask
from reasoncd.data.second import swapped_order_truth_path
from reasoncd.evaluation.targets import MultiTargetScore

GROUPS = ("explicit", "implicit_seen", "implicit_heldout", "explanation", "absent", MULTI_KIND)
# Evaluation splits draw about half their questions in phrasings no training question uses (`heldout`).
PHRASINGS = ("seen", "heldout")


def group_of(sample: dict) -> str:
    kind = sample.get("kind", "explicit")
    if kind == "implicit":
        return "implicit_heldout" if sample.get("heldout") else "implicit_seen"
    return kind if kind in GROUPS else "explicit"


def is_multi(sample: dict) -> bool:
    """A question about several changes with its targets listed (scored target by target)."""
    return sample.get("kind") == MULTI_KIND and bool(sample.get("targets"))


def truth_targets(sample: dict, shape: tuple[int, int]) -> list[dict]:
    """A question's targets with their masks read (`{"label", "present", "mask"}`; None for an absent part)."""
    targets = []
    for target in sample["targets"]:
        mask = read_mask(target["mask_path"]) if target["present"] else None
        if mask is not None and mask.shape != tuple(shape):
            raise ValueError(f"{target['mask_path']}: mask {mask.shape} does not match the images {tuple(shape)}")
        targets.append({"label": target["label"], "present": target["present"], "mask": mask})
    return targets


def pair_key(sample: dict) -> tuple[str, str]:
    return sample["img1_path"], sample["img2_path"]


def truth_key(truth: np.ndarray) -> str:
    """A short name for a truth's content: masks of one change stored twice (SECOND's "building added" is its
    "tree removed") get the same key."""
    truth = np.asarray(truth, dtype=bool)
    return f"{truth.shape}:{hashlib.blake2b(np.packbits(truth).tobytes(), digest_size=16).hexdigest()}"


def with_dates_swapped(sample: dict) -> dict:
    return {**sample, "img1_path": sample["img2_path"], "img2_path": sample["img1_path"]}


def batches_by_pair(samples: list[dict], batch_size: int):
    """Batches of sample indices in which questions about one pair stay together (the pair is encoded once, and
    the counterfactual can swap states between its questions)."""
    by_pair = defaultdict(list)
    for index, sample in enumerate(samples):
        by_pair[pair_key(sample)].append(index)
    batch = []
    for indices in by_pair.values():
        if batch and len(batch) + len(indices) > batch_size:
            yield batch
            batch = []
        batch.extend(indices)
    if batch:
        yield batch


# ------------------------------------------------------------------------------------------- per-batch pieces


def seg_predicted_teacher_forced(logits: torch.Tensor, labels: torch.Tensor, seg_token_id: int) -> torch.Tensor:
    """
    Teacher forcing's stand-in for "the model would answer with `[SEG]`", per row `(B,)`. Positions are shifted as
    in the text loss. A row whose reference holds `[SEG]`: some answer position's most likely next token is `[SEG]`.
    A row whose reference is an absent answer: its most likely opening differs from the reference's. Fed an absent
    answer, a model never predicts `[SEG]` inside it; whether it would have said "absent" is decided in the
    opening tokens ("There is no change" / "It's the"), the ones `answer_decision_loss_weight` weighs.
    """
    targets = labels[:, 1:]
    answer = targets != -100
    predicted = logits[:, :-1].argmax(-1)
    emits_seg = ((predicted == seg_token_id) & answer).any(dim=1)
    opening = answer & (answer.long().cumsum(dim=1) <= ANSWER_DECISION_TOKENS)
    opens_as_reference = ((predicted == targets) | ~opening).all(dim=1)
    reference_has_seg = ((targets == seg_token_id) & answer).any(dim=1)
    return torch.where(reference_has_seg, emits_seg, ~opens_as_reference)


def seg_decided_teacher_forced(model, outputs, labels: torch.Tensor) -> torch.Tensor:
    """
    Per row `(B,)`, whether `model` would point at a mask, under teacher forcing: the presence head's decision
    where the model has one (generation follows it), else `seg_predicted_teacher_forced`.
    """
    if getattr(outputs, "presence_logits", None) is not None:
        return model.presence_margin(outputs.presence_logits) > 0
    return seg_predicted_teacher_forced(outputs.logits, labels, model.config.seg_token_id)


def swap_sources(pair_keys: list, truth_keys: list, has_seg: list[bool]) -> list[int | None]:
    """
    For each row, the row whose `[SEG]` state it receives in the counterfactual, or None when it takes no part.

    `truth_keys` name each row's truth (`truth_key`). Within each pair, the rows with `[SEG]` are grouped by truth
    and each group takes the states of the next group (cyclically; row j of a group takes row j of the next, modulo
    its size), so every row receives a state made for a different truth. A pair whose `[SEG]` rows all share one
    truth is left out.
    """
    groups_of_pair: dict = defaultdict(lambda: defaultdict(list))
    for row, (pair, truth, seg) in enumerate(zip(pair_keys, truth_keys, has_seg)):
        if seg:
            groups_of_pair[pair][truth].append(row)
    sources: list[int | None] = [None] * len(pair_keys)
    for by_truth in groups_of_pair.values():
        groups = list(by_truth.values())
        if len(groups) < 2:
            continue
        for position, rows in enumerate(groups):
            donors = groups[(position + 1) % len(groups)]
            for j, row in enumerate(rows):
                sources[row] = donors[j % len(donors)]
    return sources


@torch.no_grad()
def counterfactual_masks(model, processor, inputs, features, seg_hidden_states: torch.Tensor,
                         sources: list[int | None]) -> list[np.ndarray | None]:
    """
    Per row, the mask decoded over the row's own pair from row `sources[row]`'s `[SEG]` state (None where the
    row takes no part). `inputs` are the processor's (per-pair sizes, `pair_index`), `features` the batch's
    `model.encode_frozen` output (reused, so the encoders do not run again).
    """
    rows = [row for row, source in enumerate(sources) if source is not None]
    swapped: list[np.ndarray | None] = [None] * len(sources)
    if not rows:
        return swapped
    embeddings = model.mask_embeddings(features, inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])
    # A checkpoint saved before `fusion_film` existed brings modeling code that returns the embedding alone.
    embeddings, date_features = embeddings if isinstance(embeddings, tuple) else (embeddings, None)
    device = inputs["pair_index"].device
    pairs = inputs["pair_index"][torch.tensor(rows, device=device)]
    donors = torch.tensor([sources[row] for row in rows], device=seg_hidden_states.device)
    per_date = {} if date_features is None else {"date_features": per_prompt(date_features, pairs)}
    logits = model.decode_masks(embeddings[pairs], seg_hidden_states[donors], **per_date)
    pairs = pairs.cpu()
    masks = processor.post_process_masks(logits, [True] * len(rows), inputs["reshaped_sizes"].cpu()[pairs],
                                         inputs["image_sizes"].cpu()[pairs].tolist())
    for row, mask in zip(rows, masks):
        swapped[row] = mask
    return swapped


def batch_inputs(model, processor, batch: list[dict], *, teacher_forced: bool = False):
    """The processor's inputs for `batch` (questions grouped by pair, as `batches_by_pair` gives them), each pair's
    images read once, on the model's device; with `teacher_forced`, the reference answers too. Returns the inputs,
    the pairs' `(T1, T2)` images and each question's index into them."""
    pair_keys, pairs, pair_index = {}, [], []
    for sample in batch:
        if pair_key(sample) not in pair_keys:
            pair_keys[pair_key(sample)] = len(pairs)
            pairs.append(load_images(sample))  # images only: masks are read when scoring (or swapping)
        pair_index.append(pair_keys[pair_key(sample)])
    inputs = processor(
        images_t1=[p[0] for p in pairs], images_t2=[p[1] for p in pairs],
        text=[sample["question"] for sample in batch], pair_index=pair_index,
        answers=[sample["answer"] for sample in batch] if teacher_forced else None,
        return_tensors="pt",
    ).to(model.device)
    return inputs, pairs, pair_index


def encode_batch(model, inputs):
    """The frozen encoders' output for a processor batch, computed once and handed to the model and the
    counterfactual alike."""
    return model.encode_frozen(inputs["pixel_values_t1"], inputs["pixel_values_t2"],
                               inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])


def batch_counterfactual(model, processor, inputs, features, seg_present, seg_hidden_states, truths,
                         indices: list[int]) -> list[tuple[np.ndarray | None, int | None]]:
    """Per row of a batch (the samples at `indices` of the whole list, with their `truths`): the swapped mask and
    the sample index whose `[SEG]` state it used, or (None, None)."""
    sources = swap_sources(inputs["pair_index"].tolist(), [truth_key(truth) for truth in truths],
                           [bool(v) for v in seg_present.tolist()])
    masks = counterfactual_masks(model, processor, inputs, features, seg_hidden_states, sources)
    return [(mask, None if source is None else indices[source]) for mask, source in zip(masks, sources)]


def teacher_forced_masks(processor, inputs, outputs, answers: list[str]) -> tuple[list, list]:
    """Per row of a teacher-forced batch: the union mask and the targets (`{"label", "mask"}` per `[SEG]` of the
    reference answer, named by its words)."""
    rows = inputs["pair_index"]
    sizes = inputs["image_sizes"][rows].tolist()
    per_target = processor.post_process_targets(outputs.target_masks, outputs.target_present,
                                                inputs["reshaped_sizes"][rows], sizes)
    targets = [[{"label": label, "mask": mask} for label, mask in zip(processor.target_labels(answer), found)]
               for answer, found in zip(answers, per_target)]
    masks = [np.logical_or.reduce(found) if found else np.zeros(size, dtype=bool)
             for found, size in zip(per_target, sizes)]
    return masks, targets


def swappable_rows(seg_present: torch.Tensor, batch: list[dict]) -> torch.Tensor:
    """The rows whose one `[SEG]` state the counterfactual may swap: questions about several changes take no part."""
    return seg_present & torch.tensor([not is_multi(sample) for sample in batch], device=seg_present.device)


@torch.no_grad()
def predict_samples(model, processor, samples: list[dict], *, batch_size: int = 8, teacher_forced: bool = False,
                    max_new_tokens: int = 48, counterfactual: bool = True, order: bool = True,
                    progress: bool = True) -> list[dict]:
    """
    One `{"text", "mask", "targets", "seg", "swapped_mask", "swap_source", "order_mask"}` per sample. Free generation
    (what a user gets) by default; `teacher_forced` feeds the reference answer and reads the masks at its `[SEG]`
    tokens (LISA's validation mode). `targets` holds a `{"label", "mask"}` per `[SEG]` and `mask` their union. `seg`
    is the model's own choice: the answer holds `[SEG]` (free generation) or some answer position predicts it
    (teacher forced). `swapped_mask` is the counterfactual mask decoded from the first `[SEG]` state of sample
    `swap_source` (see `swap_sources`; questions about several changes take no part), None where the sample takes
    no part or `counterfactual` is off.
    `order_mask` (free generation with `order`) is the map generated for the question with T1 and T2 swapped, for
    the samples with a `swapped_order_truth_path`; None elsewhere.
    """
    from tqdm.auto import tqdm

    model.eval()
    results: list[dict | None] = [None] * len(samples)
    bar = tqdm(total=len(samples), desc="teacher-forced" if teacher_forced else "generating", disable=not progress)
    for indices in batches_by_pair(samples, batch_size):
        batch = [samples[i] for i in indices]
        inputs, pairs, pair_index = batch_inputs(model, processor, batch, teacher_forced=teacher_forced)
        features = encode_batch(model, inputs)
        if teacher_forced:
            labels = inputs.pop("labels")
            outputs = model(**inputs, frozen_features=features)
            texts = [sample["answer"] for sample in batch]
            masks, targets = teacher_forced_masks(processor, inputs, outputs, texts)
            seg = seg_decided_teacher_forced(model, outputs, labels).tolist()
        else:
            outputs = model.generate(**inputs, frozen_features=features, max_new_tokens=max_new_tokens)
            processed = processor.post_process_generation(outputs)
            texts = [p["text"] for p in processed]
            masks = [p["mask"] for p in processed]
            targets = [[{"label": t["label"], "mask": t["mask"]} for t in p["targets"]] for p in processed]
            seg = outputs.seg_present.tolist()
        swaps = [(None, None)] * len(indices)
        swappable = swappable_rows(outputs.seg_present, batch)
        seg_rows_per_pair = Counter(pair for pair, has_seg in zip(pair_index, swappable.tolist()) if has_seg)
        if counterfactual and max(seg_rows_per_pair.values(), default=0) > 1:
            # the truths only decide which questions swap states (scoring reads them again)
            truths = [load_mask(sample, pairs[pair][0].shape[:2]) for sample, pair in zip(batch, pair_index)]
            swaps = batch_counterfactual(model, processor, inputs, features, swappable,
                                         outputs.seg_hidden_states, truths, indices)
        for row, i in enumerate(indices):
            results[i] = {"text": texts[row], "mask": masks[row], "targets": targets[row], "seg": bool(seg[row]),
                          "swapped_mask": swaps[row][0], "swap_source": swaps[row][1], "order_mask": None}
        bar.update(len(indices))
    bar.close()
    ordered = [i for i, sample in enumerate(samples) if swapped_order_truth_path(sample) is not None]
    if order and not teacher_forced and ordered:
        swapped = predict_samples(model, processor, [with_dates_swapped(samples[i]) for i in ordered],
                                  batch_size=batch_size, max_new_tokens=max_new_tokens, counterfactual=False,
                                  order=False, progress=progress)
        for i, prediction in zip(ordered, swapped):
            results[i]["order_mask"] = prediction["mask"]
    return results


# ------------------------------------------------------------------------------------------------ scoring


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class QuestionSensitivity:
    """Mean IoU between the masks predicted for two questions about one pair whose truths differ."""

    def __init__(self) -> None:
        self.pred_ious: list[float] = []
        self.truth_ious: list[float] = []

    def update(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """`rows`: `(predicted mask, truth)` of each present-CRoI question about one pair (an answer without
        `[SEG]` has an empty mask)."""
        for (pred_a, truth_a), (pred_b, truth_b) in combinations(rows, 2):
            if np.array_equal(truth_a, truth_b):  # the same change asked another way: no test of the question
                continue
            self.pred_ious.append(mask_iou(pred_a, pred_b))
            self.truth_ious.append(mask_iou(truth_a, truth_b))

    def compute(self) -> dict:
        return {"mean_iou": _mean(self.pred_ious), "truth_mean_iou": _mean(self.truth_ious),
                "n_comparisons": len(self.pred_ious)}


class Counterfactual:
    """F1 of the original masks and of the masks decoded from another question's `[SEG]` state, both against the
    row's own truth, over the same rows."""

    def __init__(self) -> None:
        self.original, self.swapped = ChangeMetrics(), ChangeMetrics()

    def update(self, pred: np.ndarray, swapped: np.ndarray, truth: np.ndarray) -> None:
        self.original.update(pred, truth)
        self.swapped.update(swapped, truth)

    def compute(self) -> dict:
        rows = self.original.n_samples
        if not rows:
            return {"f1_original": None, "f1_swapped": None, "f1_drop": None, "n_rows": 0}
        original, swapped = self.original.compute()["f1"], self.swapped.compute()["f1"]
        return {"f1_original": original, "f1_swapped": swapped, "f1_drop": original - swapped, "n_rows": rows}


class OrderAccuracy:
    """Per question asked with T1 and T2 swapped: is its map closer to the swapped truth than to the original?"""

    def __init__(self) -> None:
        self.total = self.right = 0

    def update(self, pred: np.ndarray, truth: np.ndarray, swapped_truth: np.ndarray) -> None:
        if np.array_equal(truth, swapped_truth):  # the order does not change the answer: no test of it
            return
        self.total += 1
        self.right += mask_iou(pred, swapped_truth) > mask_iou(pred, truth)

    def compute(self) -> dict:
        return {"accuracy": self.right / self.total if self.total else None, "n_questions": self.total}


def fidelity_score(result: dict) -> float:
    """
    mean(F1, steering accuracy, absent-CRoI accuracy, 1 - question sensitivity) over the terms measured (F1 always
    is), each in [0, 1]: high only when the masks are right, follow the asked CRoI, differ between questions and
    stay away from absent CRoIs.
    """
    sensitivity = result["question_sensitivity"]["mean_iou"]
    terms = [result["f1"], result["steering"]["accuracy"], result["text"]["absent_accuracy"],
             None if sensitivity is None else 1.0 - sensitivity]
    measured = [float(term) for term in terms if term is not None]
    return sum(measured) / len(measured)


def question_use_figures(result: dict) -> dict[str, float | None]:
    """The question-use figures of a `score` result under flat names (training logs them as `eval_<name>`)."""
    return {
        "steering": result["steering"]["accuracy"],
        "absent_accuracy": result["text"]["absent_accuracy"],
        "seg_emission_rate": result["text"]["seg_emission_rate"],
        "question_sensitivity": result["question_sensitivity"]["mean_iou"],
        "counterfactual_f1_drop": result["counterfactual"]["f1_drop"],
        "order_accuracy": result["order"]["accuracy"],
        "answer_map_agreement": result["text"]["answer_map_agreement"],
        "fidelity_score": result["fidelity_score"],
        **{f"multi_{name}": result["multi_target"].get(name)
           for name in ("target_f1", "t_acc", "n_acc", "count_accuracy")},
    }


def phrasing_of(sample: dict) -> str:
    """Whether a question is phrased as some training question is (`seen`) or as none is (`heldout`)."""
    return "heldout" if sample.get("heldout") else "seen"


def score_by_phrasing(samples: list[dict], predictions: list[dict]) -> dict[str, dict]:
    """`score`'s figures (per-sample rows left out) over the questions phrased as training questions are beside
    those phrased as none is, where the samples hold both: a model can fail on new pairs or on new wordings, and
    only the two apart tell which. The counterfactual takes no part (its swaps reach across the two)."""
    rows = {name: [i for i, sample in enumerate(samples) if phrasing_of(sample) == name] for name in PHRASINGS}
    if not all(rows.values()):
        return {}
    parts = {}
    for name, indices in rows.items():
        own = [{**predictions[i], "swapped_mask": None, "swap_source": None} for i in indices]
        result = score([samples[i] for i in indices], own, by_phrasing=False)
        parts[name] = {**{k: v for k, v in result.items() if k != "per_sample"}, "n_samples": len(indices)}
    return parts


def score(samples: list[dict], predictions: list[dict], *, by_phrasing: bool = True) -> dict:
    """
    The metrics dict: overall pixel metrics, per group, text figures, steering, question sensitivity, the
    counterfactual, the fidelity score, the figures of questions about several changes (`multi_target`), and
    per-sample IoU. Truths are read one pair at a time. With `by_phrasing`, also `score_by_phrasing`'s split under
    `by_phrasing` (empty where every question is phrased one way).
    """
    overall = ChangeMetrics()
    groups = {name: ChangeMetrics() for name in GROUPS}
    seg_expected = seg_emitted = absent_total = absent_right = agreeing = 0
    steering, sensitivity, counterfactual, order = Steering(), QuestionSensitivity(), Counterfactual(), OrderAccuracy()
    multi = MultiTargetScore()
    per_sample: list[dict | None] = [None] * len(samples)
    for indices in batches_by_pair(samples, 1):  # batches of one pair each
        truths = {}
        present_rows = []
        for i in indices:
            sample, prediction = samples[i], predictions[i]
            truth = truths[i] = load_mask(sample, prediction["mask"].shape)  # the images are not needed here
            overall.update(prediction["mask"], truth)
            agreeing += says_absent(prediction["text"]) != bool(np.any(prediction["mask"]))
            if prediction.get("order_mask") is not None:
                path = swapped_order_truth_path(sample)
                swapped_truth = read_mask(path) if path.is_file() else np.zeros_like(truth)
                order.update(prediction["order_mask"], truth, swapped_truth)
            group = group_of(sample)
            groups[group].update(prediction["mask"], truth)
            if is_multi(sample):
                multi.update(prediction.get("targets") or [], truth_targets(sample, truth.shape), truth.shape)
            if SEG in sample["answer"]:
                seg_expected += 1
                seg_emitted += prediction["seg"]
                if not is_multi(sample):  # its targets are compared with each other under multi_target
                    steering.update(prediction["mask"], truth,
                                    (read_mask(path) for path in sample.get("other_masks", {}).values()))
                    present_rows.append((prediction["mask"], truth))
            else:
                absent_total += 1
                absent_right += not prediction["seg"]
            per_sample[i] = {"source": sample.get("source"), "group": group, "question": sample["question"],
                             "answer": prediction["text"], "iou": mask_iou(prediction["mask"], truth)}
        sensitivity.update(present_rows)
        for i in indices:
            swapped, source = predictions[i].get("swapped_mask"), predictions[i].get("swap_source")
            if swapped is None:
                continue
            source_truth = truths[source] if source in truths else load_mask(samples[source], swapped.shape)
            if np.array_equal(truths[i], source_truth):  # two mask files of one change: the swap tests nothing
                continue
            counterfactual.update(predictions[i]["mask"], swapped, truths[i])
    result = overall.compute()
    result["groups"] = {name: {**m.compute(), "n_samples": m.n_samples} for name, m in groups.items() if m.n_samples}
    result["text"] = {
        "seg_emission_rate": seg_emitted / seg_expected if seg_expected else None,
        "absent_accuracy": absent_right / absent_total if absent_total else None,
        "n_present": seg_expected,
        "n_absent": absent_total,
        "answer_map_agreement": agreeing / len(samples) if samples else None,
    }
    result["steering"] = steering.compute()
    result["order"] = order.compute()
    result["question_sensitivity"] = sensitivity.compute()
    result["counterfactual"] = counterfactual.compute()
    result["multi_target"] = multi.compute()
    result["fidelity_score"] = fidelity_score(result)
    if by_phrasing:
        result["by_phrasing"] = score_by_phrasing(samples, predictions)
    result["per_sample"] = per_sample
    return result
