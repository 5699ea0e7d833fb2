"""What a scene run found, per question: one answer for the scene from the tiles' answers, and counts; per target of
a question whose answers name several, the same counts."""
from __future__ import annotations

from collections import Counter

ANSWERS_LISTED = 5  # most frequent tile answers kept in the summary


def aggregate_answers(texts: list[str], seg_present: list[bool]) -> dict:
    """The scene's answer is the most frequent answer among tiles where the model pointed at a change (its [SEG]);
    where no tile did, the most frequent answer of all tiles. Ties go to the answer seen first."""
    with_change = [text for text, seg in zip(texts, seg_present) if seg]
    pool = with_change or texts
    counts = Counter(pool)
    answer = max(counts, key=lambda text: (counts[text], -pool.index(text))) if pool else None
    listed = Counter(texts).most_common(ANSWERS_LISTED)
    return {"answer": answer, "tile_answers": [{"text": text, "tiles": tiles} for text, tiles in listed]}


def question_summary(question: str, files: dict, texts: list[str], seg_present: list[bool], changed_pixels: int,
                     polygons: dict) -> dict:
    """`polygons`: what the polygon writer found (count, and their summed ground area: the changed pixels' area)."""
    return {
        "question": question,
        **aggregate_answers(texts, seg_present),
        "tiles_with_change": int(sum(seg_present)),
        "tiles_without_change": int(len(seg_present) - sum(seg_present)),
        "changed_pixels": int(changed_pixels),
        "changed_area_m2": polygons["area_m2"],
        "polygons": polygons["polygons"],
        "files": files,
    }


def target_summary(label: str, files: dict, tiles: int, changed_pixels: int, polygons: dict) -> dict:
    """One target of a question whose answers name several: its label, the tiles that named it, its changed pixels
    and area, its polygon count and files."""
    return {"label": label, "tiles_with_target": int(tiles), "changed_pixels": int(changed_pixels),
            "changed_area_m2": polygons["area_m2"], "polygons": polygons["polygons"], "files": files}
