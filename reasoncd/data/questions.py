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

import random

CLASSES: tuple[str, ...] = ("water", "ground", "low_vegetation", "tree", "building", "playground")
DIRECTIONS: tuple[str, ...] = ("increase", "decrease", "any")
KINDS: tuple[str, ...] = ("explicit", "implicit", "explanation", "absent")
SPLITS: tuple[str, ...] = ("train", "val", "test")
SEG_TOKEN = "[SEG]"

# Held out: every HELDOUT_EVERY-th phrasing, counting from 1.
HELDOUT_EVERY = 4

_EXPLICIT: dict[str, dict[str, list[str]]] = {
    "water": {
        "increase": [
            "new water bodies",
            "water that appeared",
            "newly flooded areas",
            "new ponds and lakes",
            "expansion of water surfaces",
            "areas that became water",
            "new reservoirs",
            "increased water area",
        ],
        "decrease": [
            "water bodies that disappeared",
            "lost water surfaces",
            "ponds that were filled in",
            "shrinking lakes",
            "areas that are no longer water",
            "removed water bodies",
            "dried-up water areas",
            "decreased water area",
        ],
        "any": [
            "water",
            "water bodies",
            "changed water areas",
            "river",
            "water changes",
            "rivers and lakes",
            "changes of ponds and lakes",
            "water surface changes",
        ],
    },
    "ground": {
        "increase": [
            "new bare ground",
            "newly exposed bare soil",
            "new non-vegetated surface",
            "new roads and paved areas",
            "areas that became bare land",
            "new dirt lots",
            "increase of bare land",
            "new non-vegetated ground",
        ],
        "decrease": [
            "bare ground that disappeared",
            "bare soil that was covered",
            "reduced non-vegetated surface",
            "lost bare land",
            "areas that are no longer bare ground",
            "removed paved areas",
            "decrease of bare land",
            "vanished bare soil",
        ],
        "any": [
            "bare ground",
            "non-vegetated ground surface",
            "changed bare land",
            "bare soil changes",
            "ground surface",
            "changes in bare land",
            "non-vegetated surface",
            "changes of roads and bare soil",
        ],
    },
    "low_vegetation": {
        "increase": [
            "new low vegetation",
            "new grassland",
            "new lawns",
            "areas that became grass",
            "newly planted crops",
            "increase of grassland",
            "new farmland and meadows",
            "expanded low vegetation",
        ],
        "decrease": [
            "lost grassland",
            "low vegetation that disappeared",
            "removed lawns",
            "lost farmland",
            "areas that are no longer grass",
            "decrease of low vegetation",
            "cleared meadows",
            "vanished crop fields",
        ],
        "any": [
            "low vegetation",
            "grassland",
            "grass and crops",
            "changed low vegetation",
            "farmland changes",
            "changes of lawns and meadows",
            "low vegetation changes",
            "grass",
        ],
    },
    "tree": {
        "increase": [
            "new trees",
            "newly planted trees",
            "new forest",
            "areas that became woodland",
            "increase of tree cover",
            "expanded forest",
            "new tree canopy",
            "new orchards",
        ],
        "decrease": [
            "lost trees",
            "removed trees",
            "cut-down trees",
            "lost forest",
            "areas that are no longer woodland",
            "decrease of tree cover",
            "cleared woodland",
            "felled trees",
        ],
        "any": [
            "trees",
            "forest",
            "woodland",
            "changed trees",
            "tree changes",
            "tree cover",
            "changes in forest",
            "tree canopy",
        ],
    },
    "building": {
        "increase": [
            "new buildings",
            "newly constructed houses",
            "new houses",
            "newly built structures",
            "buildings that appeared",
            "new construction",
            "increase of buildings",
            "new residential buildings",
        ],
        "decrease": [
            "demolished buildings",
            "buildings that were removed",
            "lost buildings",
            "destroyed houses",
            "torn-down structures",
            "buildings that disappeared",
            "decrease of buildings",
            "removed houses",
        ],
        "any": [
            "building",
            "buildings",
            "changed buildings",
            "building changes",
            "houses",
            "changes of buildings",
            "built structures",
            "building footprint changes",
        ],
    },
    "playground": {
        "increase": [
            "new playgrounds",
            "new sports fields",
            "newly built courts",
            "new running tracks",
            "new playing fields",
            "playgrounds that appeared",
            "increase of sports grounds",
            "new football pitches",
        ],
        "decrease": [
            "removed playgrounds",
            "lost sports fields",
            "demolished courts",
            "playgrounds that disappeared",
            "removed running tracks",
            "decrease of sports grounds",
            "lost playing fields",
            "sports fields that were built over",
        ],
        "any": [
            "playground",
            "sports field",
            "changed playgrounds",
            "playground changes",
            "sports grounds",
            "courts and tracks",
            "changes of sports fields",
            "athletic fields",
        ],
    },
}

_IMPLICIT: dict[str, dict[str, list[str]]] = {
    "water": {
        "increase": [
            "changes caused by heavy rainfall",
            "changes that could follow a river bursting its banks",
            "changes from digging a new fish pond",
            "changes that give farmers more water for irrigation",
            "changes after a dam was closed and the valley filled up",
            "changes that create new habitat for ducks and fish",
            "changes caused by rising sea levels",
            "changes that add places for boating",
            "changes where land was submerged",
            "changes caused by a long rainy season",
        ],
        "decrease": [
            "changes caused by drought",
            "changes from land reclamation along the shore",
            "changes that reduce the habitat of fish",
            "changes caused by a long dry summer",
            "changes after a reservoir was drained",
            "changes that leave boats stranded",
            "changes from over-extraction of water for irrigation",
            "changes that lower the local water supply",
            "changes where wetlands were drained",
            "changes that end fishing in the area",
        ],
        "any": [
            "changes a hydrologist would want to map",
            "changes that alter the local water cycle",
            "changes that matter for a flood-risk map",
            "changes in where fish can live",
            "changes that a water-resources agency would monitor",
            "changes that affect where boats can go",
            "changes that affect aquatic habitats",
            "changes that matter for water-quality monitoring",
            "changes in the amount of open water",
            "changes relevant to the local water balance",
        ],
    },
    "ground": {
        "increase": [
            "changes caused by land clearing before construction",
            "changes that expose the soil to erosion",
            "changes from preparing a construction site",
            "changes that add space for trucks to drive and park",
            "changes that leave land bare after clearing",
            "changes caused by a landslide stripping the hillside",
            "changes from opening a quarry or mine",
            "changes that increase dust in dry weather",
            "changes that turn land into an empty dirt lot",
            "changes caused by topsoil being scraped away",
        ],
        "decrease": [
            "changes where empty lots were put to use",
            "changes that cover up exposed soil",
            "changes that reduce dust and soil erosion",
            "changes that green or build over waste land",
            "changes where an unpaved parking lot was redeveloped",
            "changes that make use of idle bare land",
            "changes that cover dirt roads",
            "changes that reduce the bare earth exposed to wind",
            "changes where vacant lots disappeared",
            "changes that heal the scars of earlier earthworks",
        ],
        "any": [
            "changes in land that has neither plants nor buildings",
            "changes an erosion-control survey would track",
            "changes in exposed earth",
            "changes that matter for dust and soil erosion",
            "changes in idle or unused land",
            "changes a land-use inspector would check on unused plots",
            "changes in the open land left between fields and houses",
            "changes in surfaces without any plant cover",
            "changes relevant to a survey of vacant land",
            "changes in where the soil lies exposed",
        ],
    },
    "low_vegetation": {
        "increase": [
            "changes that create new pasture for grazing animals",
            "changes caused by abandoned land being overgrown with weeds",
            "changes that add farmland for growing crops",
            "changes from covering a bare site with turf",
            "changes from sowing a field",
            "changes that make a city greener without planting trees",
            "changes from grass reclaiming land that was bare",
            "changes that create space for a picnic on the grass",
            "changes that protect the soil with a green ground cover",
            "changes that bring more grazing land to the herders",
        ],
        "decrease": [
            "changes that reduce the area available for growing crops",
            "changes where farmland was taken for development",
            "changes that shrink grazing land",
            "changes where meadows were ploughed up or paved over",
            "changes that cost the farmers their fields",
            "changes caused by urban sprawl eating into farmland",
            "changes that reduce the green lawns of the city",
            "changes that threaten local food production",
            "changes caused by overgrazing and desertification",
            "changes that leave less pasture for cattle",
        ],
        "any": [
            "changes an agricultural survey would record",
            "changes in the fields that feed the town",
            "changes that matter to farmers",
            "changes in green areas without trees",
            "changes a crop-insurance assessor would look at",
            "changes in pasture",
            "changes in the soft green cover of the ground",
            "changes relevant to agricultural land-use statistics",
            "changes in the herbaceous cover of the land",
            "changes that a grazing authority would monitor",
        ],
    },
    "tree": {
        "increase": [
            "changes caused by reforestation",
            "changes that create more shade",
            "changes from an afforestation project",
            "changes that store more carbon in wood",
            "changes that create habitat for forest birds",
            "changes from planting a windbreak",
            "changes that will later provide timber",
            "changes where young saplings grew into a canopy",
            "changes that cool the city in summer through shade",
            "changes from a tree-planting campaign",
        ],
        "decrease": [
            "changes caused by deforestation",
            "changes caused by logging",
            "changes caused by a forest fire",
            "changes that destroy habitat for forest birds",
            "changes caused by storm damage to the woods",
            "changes that release the carbon stored in wood",
            "changes that reduce shade in the area",
            "changes from clear-cutting",
            "changes caused by timber harvesting",
            "changes caused by pests killing the woods",
        ],
        "any": [
            "changes a forester would record",
            "changes in the shade-giving cover",
            "changes relevant to a forest inventory",
            "changes in where the tall plants grow",
            "changes that affect the carbon stored in wood",
            "changes in the habitat of tree-nesting birds",
            "changes in the urban canopy",
            "changes that a timber company tracks",
            "changes in the area under tall woody plants",
            "changes relevant to a park's arborist",
        ],
    },
    "building": {
        "increase": [
            "changes that provide more living areas for people",
            "changes that promote urbanization",
            "changes brought by local construction",
            "changes caused by local population growth",
            "changes caused by local economic growth",
            "changes that create new homes",
            "changes that bring new offices and shops",
            "changes that expand the town",
            "changes that increase the number of rooftops",
            "changes from a new housing development",
        ],
        "decrease": [
            "changes that would reduce people's living areas",
            "changes that slow down urbanization",
            "changes brought by optimization and renovation of old buildings",
            "changes possibly caused by war or natural disasters",
            "changes caused by an earthquake",
            "changes from demolishing old factories",
            "changes that leave families without homes",
            "changes from clearing a slum",
            "changes caused by urban renewal",
            "changes that reduce the number of rooftops",
        ],
        "any": [
            "changes in where people live",
            "changes in the built-up area",
            "changes that a city planner must record",
            "changes that affect the property tax register",
            "changes in the man-made structures of the scene",
            "changes to the rooftops",
            "changes in the urban fabric",
            "changes a home insurer would care about",
            "changes relevant to the land registry",
            "changes that alter the population estimate",
        ],
    },
    "playground": {
        "increase": [
            "changes that give children more places to play",
            "changes that provide new sports facilities",
            "changes that support physical education at a new school",
            "changes that prepare the town for a sports event",
            "changes that create space for ball games",
            "changes that promote public fitness",
            "changes that add a running track to a campus",
            "changes that give the local team a home ground",
            "changes that make room for tennis and basketball",
            "changes that add recreational facilities",
        ],
        "decrease": [
            "changes that take away places for children to play",
            "changes that reduce sports facilities",
            "changes that leave the school without a sports ground",
            "changes that reduce space for ball games",
            "changes that reduce recreational facilities",
            "changes from turning a stadium into housing",
            "changes that end outdoor sports in the neighbourhood",
            "changes caused by closing a sports club",
            "changes that reduce opportunities for public fitness",
            "changes where a running track was dug up",
        ],
        "any": [
            "changes in recreational facilities",
            "changes where people play sports",
            "changes to school sports grounds",
            "changes an urban sports survey would track",
            "changes in places for ball games",
            "changes in facilities for physical education",
            "changes in spaces for outdoor exercise",
            "changes relevant to the town's leisure services",
            "changes in places where children play",
            "changes relevant to a count of sports facilities",
        ],
    },
}

# Phrasings that presume what the other date shows (the class replaced or the replacement) are only used when
# the change's counterpart fits, so a question never contradicts its pair ("farmland taken for development"
# where fields turned into a lake). Phrasings not listed fit any counterpart.
_BUILT = frozenset({"building", "ground", "playground"})
_VEGETATED_OR_BARE = frozenset({"ground", "low_vegetation", "tree"})
_BARE_OR_GRASS = frozenset({"ground", "low_vegetation"})
_CLEARED = frozenset({"low_vegetation", "tree", "building", "playground"})  # what clearing leaves bare
_COVERING = frozenset({"low_vegetation", "tree", "building", "playground"})  # what covers bare land
_PRESUMES: dict[str, frozenset[str]] = {
    # water decrease: what is left where the water was
    "ponds that were filled in": frozenset({"ground", "low_vegetation", "building", "playground"}),
    "dried-up water areas": _BARE_OR_GRASS,
    "changes caused by drought": _VEGETATED_OR_BARE,
    "changes from land reclamation along the shore": frozenset({"ground", "low_vegetation", "building", "playground"}),
    "changes caused by a long dry summer": _VEGETATED_OR_BARE,
    "changes after a reservoir was drained": _BARE_OR_GRASS,
    "changes from over-extraction of water for irrigation": _VEGETATED_OR_BARE,
    "changes where wetlands were drained": _VEGETATED_OR_BARE,
    # ground increase: what was there before the soil lay bare
    "changes caused by land clearing before construction": _CLEARED,
    "changes that expose the soil to erosion": frozenset({"low_vegetation", "tree"}),
    "changes from preparing a construction site": _CLEARED,
    "changes that leave land bare after clearing": _CLEARED,
    "changes caused by a landslide stripping the hillside": frozenset({"low_vegetation", "tree"}),
    "changes from opening a quarry or mine": frozenset({"low_vegetation", "tree"}),
    "changes caused by topsoil being scraped away": frozenset({"low_vegetation", "tree"}),
    # ground decrease: what covers the soil now
    "changes that reduce dust and soil erosion": frozenset({"low_vegetation", "tree"}),
    "changes that green or build over waste land": _COVERING,
    "changes where an unpaved parking lot was redeveloped": _COVERING,
    "changes that heal the scars of earlier earthworks": frozenset({"low_vegetation", "tree", "water"}),
    # low vegetation increase: what the grass replaced
    "changes caused by abandoned land being overgrown with weeds": _BUILT,
    "changes from covering a bare site with turf": frozenset({"ground"}),
    "changes from sowing a field": frozenset({"ground"}),
    "changes that make a city greener without planting trees": frozenset({"ground", "building", "playground", "water"}),
    "changes from grass reclaiming land that was bare": frozenset({"ground"}),
    "changes that protect the soil with a green ground cover": frozenset({"ground"}),
    # low vegetation decrease: what replaced the grass
    "changes where farmland was taken for development": _BUILT,
    "changes where meadows were ploughed up or paved over": _BUILT,
    "changes caused by urban sprawl eating into farmland": _BUILT,
    "changes caused by overgrazing and desertification": frozenset({"ground"}),
    # tree increase / decrease
    "changes where young saplings grew into a canopy": _BARE_OR_GRASS,
    "changes caused by deforestation": frozenset({"ground", "low_vegetation", "building", "playground"}),
    "changes caused by logging": _BARE_OR_GRASS,
    "changes caused by a forest fire": _BARE_OR_GRASS,
    "changes caused by storm damage to the woods": _BARE_OR_GRASS,
    "changes from clear-cutting": _BARE_OR_GRASS,
    "changes caused by timber harvesting": _BARE_OR_GRASS,
    "changes caused by pests killing the woods": _BARE_OR_GRASS,
    # building decrease: ruins and rubble, not new sports grounds
    "changes possibly caused by war or natural disasters": frozenset({"ground", "low_vegetation", "tree", "water"}),
    "changes caused by an earthquake": frozenset({"ground", "low_vegetation", "tree", "water"}),
    # playground decrease
    "sports fields that were built over": frozenset({"building"}),
    "changes from turning a stadium into housing": frozenset({"building"}),
    "changes where a running track was dug up": frozenset({"ground"}),
}

# Plural nouns, so every template can use a plural verb ("... appear").
_NOUNS = {
    "water": "water bodies",
    "ground": "patches of bare ground",
    "low_vegetation": "patches of low vegetation",
    "tree": "trees",
    "building": "buildings",
    "playground": "playgrounds",
}
# The class as a mass noun, for "an increase of ...".
_LABELS = {
    "water": "water",
    "ground": "non-vegetated ground",
    "low_vegetation": "low vegetation",
    "tree": "trees",
    "building": "buildings",
    "playground": "playgrounds",
}
# The class as land cover seen at one date, for "where T1 shows ...".
_COVERS = {
    "water": "water",
    "ground": "bare ground",
    "low_vegetation": "low vegetation",
    "tree": "trees",
    "building": "buildings",
    "playground": "a playground",
}
_UNKNOWN_COVER = "other land cover"

# Why an implicit question points at this class and direction (first sentence of an explanation).
_REASONS: dict[str, dict[str, list[str]]] = {
    "water": {
        "increase": [
            "Rain, floods, dams and new ponds all leave more land covered by water.",
            "The question is about water spreading over land that was dry before.",
        ],
        "decrease": [
            "Drought, drainage and land reclamation all leave less land covered by water.",
            "The question is about water that dried up or was filled in.",
        ],
        "any": [
            "The question concerns surface water, so both new and vanished water bodies matter.",
            "Water-related changes show up from above as water that appears or disappears.",
        ],
    },
    "ground": {
        "increase": [
            "Clearing, earthworks and construction sites leave the soil bare.",
            "The question is about land that lost its cover and became bare ground.",
        ],
        "decrease": [
            "Putting idle land to use means bare ground gets covered by plants or structures.",
            "The question is about bare ground that was covered up.",
        ],
        "any": [
            "The question concerns exposed, non-vegetated land, whether it appears or disappears.",
            "Changes of bare land show up from above as soil that is exposed or covered.",
        ],
    },
    "low_vegetation": {
        "increase": [
            "Pasture, crops, lawns and weeds all grow as low vegetation.",
            "The question is about land that became covered by grass or crops.",
        ],
        "decrease": [
            "Losing fields, pasture or lawns means low vegetation disappears.",
            "The question is about grass or crops that were removed or built over.",
        ],
        "any": [
            "The question concerns grass and crops, whether they appear or disappear.",
            "Farming and lawn changes show up from above as low vegetation that appears or disappears.",
        ],
    },
    "tree": {
        "increase": [
            "Planting, reforestation and growing canopies all add trees.",
            "The question is about land that became covered by tree crowns.",
        ],
        "decrease": [
            "Logging, fires, storms and clearing all remove trees.",
            "The question is about tree crowns that are gone.",
        ],
        "any": [
            "The question concerns the tree canopy, whether it grows or shrinks.",
            "Forest changes show up from above as tree crowns that appear or disappear.",
        ],
    },
    "building": {
        "increase": [
            "More living space, urban growth and construction all show up from above as new buildings.",
            "The question is about the town growing, which means new roofs on land that was open before.",
        ],
        "decrease": [
            "Demolition, disasters and urban renewal all show up from above as buildings that are gone.",
            "The question is about the town shrinking or being rebuilt, which means buildings were removed.",
        ],
        "any": [
            "The question concerns the built environment, which is represented by buildings.",
            "Changes of the built-up area show up from above as buildings that appear or disappear.",
        ],
    },
    "playground": {
        "increase": [
            "New places for sport and play show up from above as new courts, pitches and tracks.",
            "The question is about recreation facilities being built.",
        ],
        "decrease": [
            "Losing places for sport and play means courts, pitches or tracks disappear.",
            "The question is about recreation facilities being removed or built over.",
        ],
        "any": [
            "The question concerns sports and play facilities, whether they appear or disappear.",
            "Recreation changes show up from above as courts, pitches and tracks that appear or disappear.",
        ],
    },
}

# Second sentence of an explanation: the visual evidence, ending with the single [SEG].
_EVIDENCE = {
    "increase": [
        "Comparing the images, {noun} appear in the later image (T2) where the earlier image (T1) shows {cover}, "
        "so this is an increase of {label} [SEG].",
        "In the later image (T2) there are {noun} where the earlier image (T1) had {cover}; "
        "the change map marks these new {noun} [SEG].",
    ],
    "decrease": [
        "Comparing the images, {noun} of the earlier image (T1) are replaced by {cover} in the later image (T2), "
        "so this is a decrease of {label} [SEG].",
        "The earlier image (T1) has {noun} where the later image (T2) shows {cover}; "
        "the change map marks these lost {noun} [SEG].",
    ],
    "any": [
        "Comparing the earlier image (T1) with the later image (T2), I mark every place where {noun} appear "
        "or disappear [SEG].",
        "The change map marks all {noun} that differ between the earlier image (T1) and the later image (T2): "
        "[SEG].",
    ],
}

_EXPLANATION_REQUESTS = (
    "{question}, and explain why.",
    "{question}. Please explain your reasoning.",
    "{question}. Please explain why.",
)

# Plain answers name the change they mark (for an implicit question: what it was resolved to), the class noun right
# before [SEG]. A reader can check the model's reading of the question, and the state that predicts [SEG] (the one
# that prompts the mask decoder) sits on the class noun itself.
PLAIN_ANSWERS: tuple[str, ...] = ("It's the {target} [SEG].", "Sure, here are the {target} [SEG].",
                                  "The change map shows the {target} [SEG].")

_ABSENT_ANSWERS = {
    "increase": [
        "There is no change of interest: no new {noun} appear between the two images.",
        "No new {noun} can be found in the later image (T2), so there is nothing to mark.",
        "The later image (T2) shows no new {noun} compared with the earlier image (T1); "
        "the requested change is absent.",
    ],
    "decrease": [
        "There is no change of interest: no {noun} disappear between the two images.",
        "No {noun} of the earlier image (T1) are missing in the later image (T2), so there is nothing to mark.",
        "The later image (T2) has lost no {noun} compared with the earlier image (T1); "
        "the requested change is absent.",
    ],
    "any": [
        "There is no change of interest: no {noun} appear or disappear between the two images.",
        "Neither new nor removed {noun} can be found between T1 and T2, so there is nothing to mark.",
        "The extent of {label} is the same in both images; the requested change is absent.",
    ],
}
# The CRoI in words: named by plain answers, and by absent answers to implicit questions.
_TARGETS = {
    "increase": "new {noun}",
    "decrease": "removed {noun}",
    "any": "changed {noun}",
}
_ABSENT_IMPLICIT_PREFIX = "The question points to {target}. "


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
