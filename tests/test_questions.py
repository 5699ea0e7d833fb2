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


# --- questions about several changes ----------------------------------------------------------------------------
from reasoncd.data.questions import (GROUPS, MULTI_KIND, combination_question, group_covers, group_phrasings,  # noqa: E402
                                     group_question, says_absent, target_label)


def test_group_rules_say_which_changes_each_group_covers():
    # The semantic rules, written out: what each implicit group question means.
    assert dict((group, group_covers(group)) for group in GROUPS) == {
        "urban_growth": (("building", "increase"), ("playground", "increase")),
        "greening": (("low_vegetation", "increase"), ("tree", "increase")),
        "vegetation_loss": (("low_vegetation", "decrease"), ("tree", "decrease")),
        "demolition": (("building", "decrease"), ("playground", "decrease")),
        "water_shift": (("water", "increase"), ("water", "decrease")),
        "urbanisation": (("building", "increase"), ("low_vegetation", "decrease"), ("tree", "decrease")),
    }
    with pytest.raises(ValueError, match="unknown question group"):
        group_covers("suburbia")


def test_group_phrasings_are_new_held_out_every_fourth_and_distinct():
    singles = set(_all_phrasings("explicit")) | set(_all_phrasings("implicit"))
    seen = []
    for group in GROUPS:
        train, held = group_phrasings(group, False), group_phrasings(group, True)
        assert len(train) >= 4 and len(held) >= 2 and not set(train) & set(held)
        seen += train + held
    assert len(seen) == len(set(seen)) and not set(seen) & singles


def _present_labels(answer: str) -> list[str]:
    """The words right before each [SEG], as 'the <label> [SEG]' writes them."""
    return [piece.rsplit(" the ", 1)[-1].removeprefix("The ").strip() for piece in answer.split(" [SEG]")[:-1]]


@pytest.mark.parametrize("group", GROUPS)
def test_group_answers_mark_each_present_change_and_refuse_the_others_in_words(group):
    covers = group_covers(group)
    rng = random.Random(len(group))
    for bits in range(2 ** len(covers)):
        present = [part for index, part in enumerate(covers) if bits >> index & 1]
        absent = [part for part in covers if part not in present]
        sample = group_question(group, present, rng=rng, split="train")
        answer = sample["answer"]
        assert sample["kind"] == MULTI_KIND and sample["group"] == group and sample["style"] == "group"
        assert answer.count("[SEG]") == len(present)
        assert _present_labels(answer) == [target_label(*part) for part in present]
        for part in absent:  # said in words, never before a [SEG]
            assert f"no {target_label(*part)}" in answer
        assert says_absent(answer) == (not present)
        assert [(t["croi"], t["direction"], t["present"]) for t in sample["targets"]] == \
            [(*part, True) for part in present] + [(*part, False) for part in absent]
        assert sample["question"] in group_phrasings(group, False)


def test_combination_questions_join_each_changes_own_phrasings():
    rng = random.Random(3)
    parts = [("building", "increase", True), ("water", "any", True), ("playground", "decrease", False)]
    for split in ("train", "test"):
        for _ in range(50):
            sample = combination_question(parts, rng=rng, split=split)
            assert sample["style"] == "combination" and sample["kind"] == MULTI_KIND
            held = sample["heldout"]
            assert not held or split == "test"
            for croi, direction, _ in parts:
                assert any(phrase in sample["question"] for phrase in phrasings(croi, direction, "explicit", held))
            assert _present_labels(sample["answer"]) == ["new buildings", "changed water bodies"]
            assert sample["answer"].endswith("; there are no removed playgrounds.")
    assert "A, B and C" == questions.join_list(["A", "B", "C"]) and "A and B" == questions.join_list(["A", "B"])


def test_multi_questions_in_training_never_use_held_out_phrasings():
    rng = random.Random(1)
    for _ in range(300):
        group = rng.choice(GROUPS)
        sample = group_question(group, group_covers(group)[:1], rng=rng, split="train")
        assert not sample["heldout"] and sample["question"] not in group_phrasings(group, True)
    shares = [group_question(g, [], rng=rng, split="val")["heldout"] for g in GROUPS * 200]
    assert 0.4 < sum(shares) / len(shares) < 0.6


def test_multi_questions_are_refused_when_malformed():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="two or more"):
        combination_question([("water", "any", True)], rng=rng, split="train")
    with pytest.raises(ValueError, match="must differ"):
        combination_question([("water", "any", True), ("water", "any", False)], rng=rng, split="train")
    with pytest.raises(ValueError, match="covers"):
        group_question("greening", [("building", "increase")], rng=rng, split="train")


def test_corpus_holds_every_multi_question_and_answer_word():
    joined = set(corpus())
    rng = random.Random(9)
    for group in GROUPS:
        for held in (False, True):
            assert set(group_phrasings(group, held)) <= joined
        for _ in range(20):
            sample = group_question(group, rng.sample(group_covers(group), rng.randint(0, 2)), rng=rng, split="val")
            assert sample["answer"] in joined
    import re

    def words(text):
        return set(re.findall(r"[\w'()-]+|\[SEG\]", text))

    known = set().union(*map(words, joined))
    for _ in range(100):
        parts = rng.sample(CROIS, 3)
        sample = combination_question([(*part, rng.random() < 0.5) for part in parts], rng=rng, split="test")
        assert words(sample["question"]) | words(sample["answer"]) <= known
