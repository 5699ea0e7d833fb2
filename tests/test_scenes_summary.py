"""The scene's answer per question, from its tiles' answers."""
from reasoncd.scenes.summary import aggregate_answers, question_summary


def test_the_scene_answer_is_the_most_frequent_among_tiles_that_found_the_change():
    texts = ["no new buildings"] * 5 + ["It's the new buildings."] * 2 + ["new houses"]
    seg = [False] * 5 + [True] * 3
    result = aggregate_answers(texts, seg)
    assert result["answer"] == "It's the new buildings."
    assert result["tile_answers"][0] == {"text": "no new buildings", "tiles": 5}


def test_without_any_change_the_most_frequent_answer_stands_and_ties_go_to_the_first_seen():
    assert aggregate_answers(["b", "a", "a", "b"], [False] * 4)["answer"] == "b"
    assert aggregate_answers([], [])["answer"] is None


def test_question_summary_counts_tiles_and_area():
    summary = question_summary("river", {"mask": "m.tif"}, ["x", "y", "y"], [True, False, False], 40,
                               {"polygons": 3, "area_m2": 10.5})
    assert (summary["tiles_with_change"], summary["tiles_without_change"]) == (1, 2)
    assert summary["changed_area_m2"] == 10.5 and summary["polygons"] == 3 and summary["changed_pixels"] == 40
    assert question_summary("river", {}, [], [], 40, {"polygons": 0, "area_m2": None})["changed_area_m2"] is None
