from mrbench.data.schema import Grain, Query
from mrbench.grains.masking import drop_grain_text


def q(text, spans, meta=None):
    return Query("q", text=text, grains=[Grain(s, "attribute") for s in spans], meta=meta or {})


def test_span_removal_tidies_text():
    query = q("a brown dog, standing and barking", ["brown", "standing", "barking"])
    assert drop_grain_text(query, 0) == "a dog, standing and barking"
    assert drop_grain_text(query, 2) == "a brown dog, standing"
    assert drop_grain_text(query, 1) == "a brown dog, barking"


def test_whole_word_and_case_insensitive():
    query = q("A Red redwood tree", ["red"])
    assert drop_grain_text(query, 0) == "A redwood tree"


def test_builder_variants_win_and_none_is_respected():
    query = q("a red circle", ["red", "circle"], {"drop_one_text": ["a circle", None]})
    assert drop_grain_text(query, 0) == "a circle"
    assert drop_grain_text(query, 1) is None


def test_missing_span_or_no_text_gives_none():
    assert drop_grain_text(q("a cat", ["dog"]), 0) is None
    assert drop_grain_text(Query("q", image="x.png", grains=[Grain("red", "attribute")]), 0) is None
    assert drop_grain_text(q("a cat", ["cat"]), 5) is None
