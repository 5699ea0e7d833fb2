"""The CRoI question bank: coverage, held-out discipline, answer format and determinism."""
import random

import pytest

from reasoncd.data import questions
from reasoncd.data.questions import CLASSES, DIRECTIONS, KINDS, corpus, make_question, phrasings

CROIS = [(croi, direction) for croi in CLASSES for direction in DIRECTIONS]


def _asks(question, phrase):
    """Whether ``question`` is ``phrase``, alone or followed by an explanation request."""
    return question == phrase or (question.startswith(phrase) and question[len(phrase)] in ",.")


def _all_phrasings(kind):
    return [text for croi, direction in CROIS for held in (False, True)
            for text in phrasings(croi, direction, kind, held)]


@pytest.mark.parametrize("croi,direction", CROIS)
def test_every_croi_has_explicit_implicit_and_absent(croi, direction):
    explicit = phrasings(croi, direction, "explicit", False) + phrasings(croi, direction, "explicit", True)
    implicit = phrasings(croi, direction, "implicit", False) + phrasings(croi, direction, "implicit", True)
    assert len(explicit) >= 6 and len(implicit) >= 8
    for kind in ("explicit", "implicit"):
        assert len(phrasings(croi, direction, kind, True)) >= 2
        assert len(phrasings(croi, direction, kind, False)) >= 4
        assert not set(phrasings(croi, direction, kind, True)) & set(phrasings(croi, direction, kind, False))
    absent = make_question(croi, direction, "absent", rng=random.Random(1), split="train")
    assert absent["answer"] and "[SEG]" not in absent["answer"]


def test_phrasings_are_distinct_across_crois():
    for kind in ("explicit", "implicit"):
        texts = _all_phrasings(kind)
        assert len(texts) == len(set(texts)), f"a {kind} phrasing is shared by two CRoIs"
    assert not set(_all_phrasings("explicit")) & set(_all_phrasings("implicit"))


def test_training_never_uses_heldout_phrasings():
    heldout = {text for kind in ("explicit", "implicit") for croi, direction in CROIS
               for text in phrasings(croi, direction, kind, True)}
    rng = random.Random(0)
    for _ in range(4000):
        croi, direction = rng.choice(CROIS)
        counterpart = rng.choice([None, *[c for c in CLASSES if c != croi]])
        sample = make_question(croi, direction, rng.choice(KINDS), rng=rng, split="train", counterpart=counterpart)
        assert sample["heldout"] is False
        assert not any(_asks(sample["question"], text) for text in heldout), sample["question"]


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_uses_heldout_phrasings_about_half_the_time(split):
    rng = random.Random(5)
    samples = [make_question(*rng.choice(CROIS), rng.choice(KINDS), rng=rng, split=split) for _ in range(2000)]
    share = sum(s["heldout"] for s in samples) / len(samples)
    assert 0.4 < share < 0.6
    sources = {"explicit": ["explicit"], "implicit": ["implicit"], "explanation": ["implicit"],
               "absent": ["explicit", "implicit"]}
    for sample in samples:
        pool = [text for kind in sources[sample["kind"]]
                for text in phrasings(sample["croi"], sample["direction"], kind, sample["heldout"])]
        assert any(_asks(sample["question"], text) for text in pool)


def test_answer_format_per_kind():
    rng = random.Random(2)
    for _ in range(1500):
        croi, direction = rng.choice(CROIS)
        kind = rng.choice(KINDS)
        sample = make_question(croi, direction, kind, rng=rng, split=rng.choice(["train", "val", "test"]))
        assert {k: sample[k] for k in ("kind", "croi", "direction")} == {"kind": kind, "croi": croi,
                                                                          "direction": direction}
        if kind == "absent":
            assert sample["answer"].count("[SEG]") == 0
            assert any(word in sample["answer"].lower() for word in ("no ", "neither", "absent"))
        else:
            assert sample["answer"].count("[SEG]") == 1
        if kind == "explanation":
            assert "explain" in sample["question"].lower()
            assert sample["answer"].endswith("[SEG].")
            # An explanation is more than the plain answer: it names the evidence.
            assert len(sample["answer"]) > 60 and ("T1" in sample["answer"] and "T2" in sample["answer"])
        if kind in ("explicit", "implicit"):
            assert sample["answer"] in questions.plain_answers(sample["croi"], sample["direction"])


def test_explanation_names_direction_and_counterpart():
    answer = make_question("building", "increase", "explanation", rng=random.Random(0), split="train",
                           counterpart="low_vegetation")["answer"]
    assert "buildings" in answer and "low vegetation" in answer
    answer = make_question("water", "decrease", "explanation", rng=random.Random(0), split="train",
                           counterpart="ground")["answer"]
    assert "water" in answer and "bare ground" in answer


def test_absent_answer_names_the_croi():
    for seed in range(20):
        answer = make_question("water", "increase", "absent", rng=random.Random(seed), split="train")["answer"]
        assert "new water bodies" in answer


def test_counterpart_filters_contradicting_phrasings():
    rng = random.Random(3)
    questions_seen = {make_question("low_vegetation", "decrease", "implicit", rng=rng, split="train",
                                    counterpart="water")["question"] for _ in range(400)}
    assert "changes where farmland was taken for development" not in questions_seen
    assert len(questions_seen) >= 4


def test_deterministic_for_a_seed():
    def draw(seed):
        rng = random.Random(seed)
        return [make_question(*rng.choice(CROIS), rng.choice(KINDS), rng=rng, split="val") for _ in range(200)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_corpus_covers_the_bank():
    texts = corpus()
    assert len(texts) == len(set(texts))
    joined = set(texts)
    for kind in ("explicit", "implicit"):
        assert set(_all_phrasings(kind)) <= joined
    assert all(set(questions.plain_answers(*croi)) <= joined for croi in CROIS)
    rng = random.Random(4)
    for _ in range(300):
        sample = make_question(*rng.choice(CROIS), rng.choice(KINDS), rng=rng, split="test",
                               counterpart=rng.choice([None, *CLASSES]))
        assert sample["question"] in joined and sample["answer"] in joined


@pytest.mark.parametrize("args", [("river", "any", "explicit"), ("water", "up", "explicit"), ("water", "any", "vague")])
def test_rejects_unknown_values(args):
    with pytest.raises(ValueError):
        make_question(*args, rng=random.Random(0), split="train")
    with pytest.raises(ValueError):
        make_question("water", "any", "explicit", rng=random.Random(0), split="training")


def test_says_absent_recognises_every_absent_answer_and_no_present_one():
    import random

    from reasoncd.data.questions import CLASSES, DIRECTIONS, absent_answer, plain_answers, says_absent

    rng = random.Random(0)
    for croi in CLASSES:
        for direction in DIRECTIONS:
            for implicit in (False, True):
                for _ in range(4):
                    assert says_absent(absent_answer(croi, direction, rng=rng, implicit=implicit))
            assert not any(says_absent(answer) for answer in plain_answers(croi, direction))
    assert not says_absent("It's the new buildings.")
