"""Question bank for change-of-interest (CRoI) prompts on SECOND-style data.

A CRoI is a land-cover class plus a direction: ``increase`` (the class appears at T2, ``label2 == c``),
``decrease`` (the class present at T1 disappears, ``label1 == c``) or ``any`` (either). For every class and
direction the bank holds explicit phrasings (names and synonyms), implicit phrasings that need reasoning to map to
the class and direction, explanation answers, plain answers and absent-CRoI answers.

Every 4th explicit and implicit phrasing (index 3, 7, 11, ...) is held out: only validation and test samples may
use it, so evaluation can tell memorised phrasings from understood ones.

All randomness comes from the ``random.Random`` passed in, so a seed fully determines the output.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from reasoncd.data.samples import SPLITS

CLASSES: tuple[str, ...] = ("water", "ground", "low_vegetation", "tree", "building", "playground")
DIRECTIONS: tuple[str, ...] = ("increase", "decrease", "any")
KINDS: tuple[str, ...] = ("explicit", "implicit", "explanation", "absent")

# Held out: every HELDOUT_EVERY-th phrasing, counting from 1.
HELDOUT_EVERY = 4

# The phrasing tables are data: questions.json beside this module (its "about" entry says what each table holds).
_TABLES = json.loads((Path(__file__).with_name("questions.json")).read_text(encoding="utf-8"))
_EXPLICIT: dict[str, dict[str, list[str]]] = _TABLES["explicit"]
_IMPLICIT: dict[str, dict[str, list[str]]] = _TABLES["implicit"]
# Phrasings that presume what the other date shows are only used when the change's counterpart fits, so a question
# never contradicts its pair ("farmland taken for development" where fields turned into a lake).
_COVER_SETS = {name: frozenset(classes) for name, classes in _TABLES["cover_sets"].items()}
_PRESUMES: dict[str, frozenset[str]] = {
    phrase: _COVER_SETS[fits] if isinstance(fits, str) else frozenset(fits)
    for phrase, fits in _TABLES["presumes"].items()
}
_NOUNS: dict[str, str] = _TABLES["nouns"]
_LABELS: dict[str, str] = _TABLES["labels"]
_COVERS: dict[str, str] = _TABLES["covers"]
_UNKNOWN_COVER: str = _TABLES["unknown_cover"]
_REASONS: dict[str, dict[str, list[str]]] = _TABLES["reasons"]
_EVIDENCE: dict[str, list[str]] = _TABLES["evidence"]
_EXPLANATION_REQUESTS: tuple[str, ...] = tuple(_TABLES["explanation_requests"])
PLAIN_ANSWERS: tuple[str, ...] = tuple(_TABLES["plain_answers"])
_ABSENT_ANSWERS: dict[str, list[str]] = _TABLES["absent_answers"]
_TARGETS: dict[str, str] = _TABLES["targets"]
_ABSENT_IMPLICIT_PREFIX: str = _TABLES["absent_implicit_prefix"]


def _check(croi: str, direction: str) -> None:
    if croi not in CLASSES:
        raise ValueError(f"unknown CRoI class {croi!r}; expected one of {CLASSES}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")


def _is_heldout(index: int) -> bool:
    return index % HELDOUT_EVERY == HELDOUT_EVERY - 1


def phrasings(croi: str, direction: str, kind: str, heldout: bool) -> list[str]:
    """The explicit or implicit phrasings of one CRoI: the held-out part if ``heldout`` else the training part."""
    _check(croi, direction)
    banks = {"explicit": _EXPLICIT, "implicit": _IMPLICIT}
    if kind not in banks:
        raise ValueError(f"phrasings exist for kinds 'explicit' and 'implicit', not {kind!r}")
    every = banks[kind][croi][direction]
    return [text for index, text in enumerate(every) if _is_heldout(index) == heldout]


def _fill(template: str, croi: str, cover: str | None = None) -> str:
    return template.format(noun=_NOUNS[croi], label=_LABELS[croi], cover=cover or _UNKNOWN_COVER)


def explanation_answer(croi: str, direction: str, *, rng: random.Random, counterpart: str | None = None) -> str:
    """A reason plus the visual evidence, ending in one ``[SEG]``.

    ``counterpart`` is the class on the other date of the changed area (what the new class replaced, or what
    replaced the lost class); unknown or mixed → a generic wording.
    """
    _check(croi, direction)
    if counterpart is not None and counterpart not in CLASSES:
        raise ValueError(f"unknown counterpart class {counterpart!r}; expected one of {CLASSES}")
    cover = _COVERS[counterpart] if counterpart else None
    reason = rng.choice(_REASONS[croi][direction])
    evidence = _fill(rng.choice(_EVIDENCE[direction]), croi, cover)
    return f"{reason} {evidence}"


def plain_answers(croi: str, direction: str) -> list[str]:
    """Every plain answer for a CRoI: it names the change, then ``[SEG]``."""
    _check(croi, direction)
    target = _fill(_TARGETS[direction], croi)
    return [template.format(target=target) for template in PLAIN_ANSWERS]


def absent_answer(croi: str, direction: str, *, rng: random.Random, implicit: bool = False) -> str:
    """A sentence without ``[SEG]`` that says the CRoI did not change; implicit questions also name the CRoI."""
    _check(croi, direction)
    answer = _fill(rng.choice(_ABSENT_ANSWERS[direction]), croi)
    if implicit:
        target = _fill(_TARGETS[direction], croi)
        answer = _ABSENT_IMPLICIT_PREFIX.format(target=target) + answer
    return answer


def _fits(phrase: str, counterpart: str | None) -> bool:
    return counterpart is None or counterpart in _PRESUMES.get(phrase, CLASSES)


def _pick_phrasing(
    croi: str, direction: str, kind: str, rng: random.Random, split: str, counterpart: str | None
) -> tuple[str, bool]:
    # Training never sees held-out phrasings; evaluation uses them about half the time.
    heldout = split != "train" and rng.random() < 0.5
    candidates = phrasings(croi, direction, kind, heldout)
    fitting = [phrase for phrase in candidates if _fits(phrase, counterpart)]
    return rng.choice(fitting or candidates), heldout


def make_question(
    croi: str,
    direction: str,
    kind: str,
    *,
    rng: random.Random,
    split: str,
    counterpart: str | None = None,
) -> dict:
    """One question/answer pair for a CRoI.

    ``kind``: ``explicit`` / ``implicit`` (plain answer), ``explanation`` (implicit question plus a request to
    explain; the answer explains and ends in ``[SEG]``), ``absent`` (explicit or implicit question about a CRoI
    that did not change; answer without ``[SEG]``). ``counterpart`` is the class on the other date of the changed
    area, when one class dominates it: phrasings that presume something else are skipped, and explanations name
    it (see :func:`explanation_answer`). Absent questions ignore it.
    """
    _check(croi, direction)
    if kind not in KINDS:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if counterpart == croi:
        counterpart = None  # the same class on both dates says nothing about what replaced what

    if kind in ("explicit", "implicit"):
        question, heldout = _pick_phrasing(croi, direction, kind, rng, split, counterpart)
        answer = rng.choice(plain_answers(croi, direction))
    elif kind == "explanation":
        phrase, heldout = _pick_phrasing(croi, direction, "implicit", rng, split, counterpart)
        question = rng.choice(_EXPLANATION_REQUESTS).format(question=phrase)
        answer = explanation_answer(croi, direction, rng=rng, counterpart=counterpart)
    else:
        style = rng.choice(("explicit", "implicit"))
        question, heldout = _pick_phrasing(croi, direction, style, rng, split, None)
        answer = absent_answer(croi, direction, rng=rng, implicit=style == "implicit")
    return {
        "question": question,
        "answer": answer,
        "kind": kind,
        "croi": croi,
        "direction": direction,
        "heldout": heldout,
    }


def corpus() -> list[str]:
    """Every phrasing, question form and answer the bank can produce (deduplicated, in a fixed order)."""
    texts: list[str] = []
    counterparts = (None, *CLASSES)
    for croi in CLASSES:
        for direction in DIRECTIONS:
            texts += plain_answers(croi, direction)
            texts += _EXPLICIT[croi][direction]
            for phrase in _IMPLICIT[croi][direction]:
                texts.append(phrase)
                texts += [request.format(question=phrase) for request in _EXPLANATION_REQUESTS]
            for reason in _REASONS[croi][direction]:
                for evidence in _EVIDENCE[direction]:
                    for other in counterparts:
                        if other != croi:
                            texts.append(f"{reason} {_fill(evidence, croi, _COVERS[other] if other else None)}")
            target = _fill(_TARGETS[direction], croi)
            for template in _ABSENT_ANSWERS[direction]:
                answer = _fill(template, croi)
                texts += [answer, _ABSENT_IMPLICIT_PREFIX.format(target=target) + answer]
    return list(dict.fromkeys(texts))


def _absent_pattern() -> re.Pattern:
    """Every absent answer of the bank, for any class: the templates with their blanks as wildcards."""
    sentences = {template for templates in _ABSENT_ANSWERS.values() for template in templates}
    parts = [re.escape(sentence).replace(re.escape("{noun}"), ".+?").replace(re.escape("{label}"), ".+?")
             for sentence in sorted(sentences)]
    return re.compile("|".join(parts))


_ABSENT_PATTERN = _absent_pattern()


def says_absent(answer: str) -> bool:
    """Whether an answer's words say the change of interest is absent (one of the bank's absent sentences)."""
    return _ABSENT_PATTERN.search(answer) is not None
