"""Question bank for change-of-interest (CRoI) prompts on SECOND-style data.

A CRoI is a land-cover class plus a direction: ``increase`` (the class appears at T2, ``label2 == c``),
``decrease`` (the class present at T1 disappears, ``label1 == c``) or ``any`` (either). For every class and
direction the bank holds explicit phrasings (names and synonyms), implicit phrasings that need reasoning to map to
the class and direction, explanation answers, plain answers and absent-CRoI answers.

Every 4th explicit and implicit phrasing (index 3, 7, 11, ...) is held out: only validation and test samples may
use it, so evaluation can tell memorised phrasings from understood ones.

Questions about several changes (kind ``multi``) are explicit combinations of single changes' phrasings or implicit
group questions; which changes a group covers is written once, in ``questions.json`` (``groups``), and read only
through :func:`group_covers`. Their answers name each change that happened, each followed by its own ``[SEG]``, and
say the others in words without a mask.

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
MULTI_KIND = "multi"  # a question about several changes (its samples list them under "targets")

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
_GROUPS: dict[str, dict] = _TABLES["groups"]
_COMBINATIONS: tuple[str, ...] = tuple(_TABLES["combinations"])
_LISTS: dict[str, str] = _TABLES["lists"]
_MULTI_ANSWERS: dict = _TABLES["multi_answers"]
GROUPS: tuple[str, ...] = tuple(_GROUPS)


def _check(croi: str, direction: str) -> None:
    if croi not in CLASSES:
        raise ValueError(f"unknown CRoI class {croi!r}; expected one of {CLASSES}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")


def croi_units() -> tuple[str, ...]:
    """Every class with each of the two directions, as `"class:direction"`: what a question can ask about, one
    unit each (`any` asks about both of its class's units). The labels of the model's CRoI head (`croi_units`)."""
    return tuple(f"{croi}:{direction}" for croi in CLASSES for direction in DIRECTIONS if direction != "any")


def asked_units(sample: dict) -> list[str]:
    """The CRoI units a sample's question asks about, present or absent (every target's for a question about several
    changes); [] for a sample without CRoI metadata (e.g. one converted from a single-class folder)."""
    asked = sample.get("targets") or ([sample] if sample.get("croi") else [])
    units = []
    for part in asked:
        if not part.get("croi") or not part.get("direction"):
            return []
        _check(part["croi"], part["direction"])
        both = [d for d in DIRECTIONS if d != "any"] if part["direction"] == "any" else [part["direction"]]
        units += [f"{part['croi']}:{direction}" for direction in both]
    return list(dict.fromkeys(units))


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


def target_label(croi: str, direction: str) -> str:
    """The CRoI in the words an answer names it by ("new buildings"): a plain answer's and each part of an answer
    about several changes, so evaluation can match a predicted target to its truth by these words."""
    _check(croi, direction)
    return _fill(_TARGETS[direction], croi)


def plain_answers(croi: str, direction: str) -> list[str]:
    """Every plain answer for a CRoI: it names the change, then ``[SEG]``."""
    target = target_label(croi, direction)
    return [template.format(target=target) for template in PLAIN_ANSWERS]


def absent_answer(croi: str, direction: str, *, rng: random.Random, implicit: bool = False) -> str:
    """A sentence without ``[SEG]`` that says the CRoI did not change; implicit questions also name the CRoI."""
    _check(croi, direction)
    answer = _fill(rng.choice(_ABSENT_ANSWERS[direction]), croi)
    if implicit:
        answer = _ABSENT_IMPLICIT_PREFIX.format(target=target_label(croi, direction)) + answer
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
            target = target_label(croi, direction)
            for template in _ABSENT_ANSWERS[direction]:
                answer = _fill(template, croi)
                texts += [answer, _ABSENT_IMPLICIT_PREFIX.format(target=target) + answer]
    return list(dict.fromkeys(texts + _multi_corpus()))


def _absent_pattern() -> re.Pattern:
    """Every absent answer of the bank, for any class, and every answer saying that none of several changes
    happened: the templates with their blanks as wildcards."""
    sentences = {template for templates in _ABSENT_ANSWERS.values() for template in templates}
    sentences |= set(_MULTI_ANSWERS["all_absent"])
    parts = [re.escape(sentence).replace(re.escape("{noun}"), ".+?").replace(re.escape("{label}"), ".+?")
             .replace(re.escape("{absent}"), ".+?") for sentence in sorted(sentences)]
    return re.compile("|".join(parts))


_ABSENT_PATTERN = _absent_pattern()


def says_absent(answer: str) -> bool:
    """Whether an answer's words say the change of interest is absent (one of the bank's absent sentences)."""
    return _ABSENT_PATTERN.search(answer) is not None


# ------------------------------------------------------------------------------------- questions about several changes


def _target_key(key: str) -> tuple[str, str]:
    croi, _, direction = key.partition("/")
    _check(croi, direction)
    return croi, direction


def group_covers(group: str) -> tuple[tuple[str, str], ...]:
    """The changes (class, direction) a group question covers, in the order its answers list them."""
    if group not in _GROUPS:
        raise ValueError(f"unknown question group {group!r}; expected one of {GROUPS}")
    return tuple(_target_key(key) for key in _GROUPS[group]["covers"])


def group_phrasings(group: str, heldout: bool) -> list[str]:
    """A group's phrasings: the held-out part if ``heldout`` else the training part (every 4th is held out)."""
    group_covers(group)
    return [text for index, text in enumerate(_GROUPS[group]["phrasings"]) if _is_heldout(index) == heldout]


def join_list(items: list[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    if len(items) < 2:
        return "".join(items)
    return _LISTS["separator"].join(items[:-1]) + _LISTS["last"] + items[-1]


def multi_answer(present: list[tuple[str, str]], absent: list[tuple[str, str]], *, rng: random.Random) -> str:
    """The answer naming each change in ``present`` followed by its own ``[SEG]``, and saying those in ``absent`` in
    words, without a mask; without ``[SEG]`` when nothing in the question happened."""
    absent_words = join_list([_MULTI_ANSWERS["absent_item"].format(target=target_label(*part)) for part in absent])
    if not present:
        return rng.choice(_MULTI_ANSWERS["all_absent"]).format(absent=absent_words)
    targets = join_list([_MULTI_ANSWERS["present_item"].format(target=target_label(*part)) for part in present])
    tail = _MULTI_ANSWERS["absent_tail"].format(absent=absent_words) if absent else ""
    answer = rng.choice(_MULTI_ANSWERS["present"]).format(targets=targets, absent=tail)
    return answer[0].upper() + answer[1:]


def _multi_sample(question: str, parts: list[tuple[str, str, bool]], heldout: bool, rng: random.Random,
                  **metadata) -> dict:
    if len(parts) < 2:
        raise ValueError(f"a question about several changes needs two or more, got {len(parts)}")
    if len({(croi, direction) for croi, direction, _ in parts}) != len(parts):
        raise ValueError(f"the changes of one question must differ, got {parts}")
    present = [(croi, direction) for croi, direction, there in parts if there]
    absent = [(croi, direction) for croi, direction, there in parts if not there]
    # Present targets in the answer's order (that of their [SEG]s), then the absent parts.
    targets = [{"croi": croi, "direction": direction, "label": target_label(croi, direction), "present": there}
               for there in (True, False) for croi, direction, is_there in parts if is_there == there]
    return {"question": question, "answer": multi_answer(present, absent, rng=rng), "kind": MULTI_KIND,
            "croi": "", "direction": "", "heldout": heldout, "targets": targets, **metadata}


def combination_question(parts: list[tuple[str, str, bool]], *, rng: random.Random, split: str) -> dict:
    """An explicit question about several changes: each part's explicit phrasing, joined into one list. ``parts``:
    (class, direction, whether it happened), in the question's order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    for croi, direction, _ in parts:
        _check(croi, direction)
    heldout = split != "train" and rng.random() < 0.5
    phrases = [rng.choice(phrasings(croi, direction, "explicit", heldout)) for croi, direction, _ in parts]
    question = rng.choice(_COMBINATIONS).format(list=join_list(phrases))
    return _multi_sample(question, parts, heldout, rng, style="combination", group=None)


def group_question(group: str, present, *, rng: random.Random, split: str) -> dict:
    """An implicit question of ``group``; ``present`` holds the covered changes (class, direction) that happened,
    the others are answered as absent."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    covers = group_covers(group)
    present = set(present)
    if not present <= set(covers):
        raise ValueError(f"group {group!r} covers {covers}, not {sorted(present - set(covers))}")
    heldout = split != "train" and rng.random() < 0.5
    question = rng.choice(group_phrasings(group, heldout))
    return _multi_sample(question, [(*part, part in present) for part in covers], heldout, rng, style="group",
                         group=group)


def _multi_corpus() -> list[str]:
    """What questions and answers about several changes add to the corpus: every group phrasing, a combination in
    each form, and per group every answer (each subset of its changes present)."""
    texts: list[str] = []
    keys = [(croi, direction) for croi in CLASSES for direction in DIRECTIONS]
    for first, second in zip(keys, keys[1:] + keys[:1]):
        phrases = [phrasings(*first, "explicit", False)[0], phrasings(*second, "explicit", False)[0]]
        texts += [form.format(list=join_list(phrases)) for form in _COMBINATIONS]
        for present, absent in (([first, second], []), ([first], [second]), ([], [first, second])):
            texts += _every_answer(present, absent)
    for group in GROUPS:
        covers = group_covers(group)
        texts += _GROUPS[group]["phrasings"]
        for mask in range(2 ** len(covers)):
            present = [part for bit, part in enumerate(covers) if mask >> bit & 1]
            texts += _every_answer(present, [part for part in covers if part not in present])
    return texts


def _every_answer(present, absent) -> list[str]:
    templates = _MULTI_ANSWERS["present"] if present else _MULTI_ANSWERS["all_absent"]
    return [multi_answer(present, absent, rng=_Fixed(index)) for index in range(len(templates))]


class _Fixed(random.Random):
    """A Random whose choice is always element ``index`` (to list every template of an answer)."""

    def __init__(self, index: int) -> None:
        super().__init__(0)
        self.index = index

    def choice(self, seq):
        return seq[self.index]
