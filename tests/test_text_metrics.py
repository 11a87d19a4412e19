"""Edit distance and error rates against hand-counted examples."""

import pytest

from mmtok.metrics import edit_distance, error_rate


@pytest.mark.parametrize("reference, hypothesis, distance", [
    ("", "", 0),
    ("abc", "abc", 0),
    ("abc", "", 3),                 # three deletions
    ("", "ab", 2),                  # two insertions
    ("kitten", "sitting", 3),       # k->s, e->i, +g
    ("flaw", "lawn", 2),            # -f, +n
    (["ð", "ə", "k", "æ", "t"], ["ð", "ə", "k", "ɑ", "t", "s"], 2),
])
def test_edit_distance_matches_hand_counts(reference, hypothesis, distance):
    assert edit_distance(reference, hypothesis) == distance
    assert edit_distance(hypothesis, reference) == distance


def test_error_rate_is_corpus_level():
    references = [["a", "b", "c", "d"], ["e", "f"]]
    hypotheses = [["a", "x", "c", "d"], []]  # 1 substitution + 2 deletions over 6 reference symbols
    assert error_rate(references, hypotheses) == pytest.approx(3 / 6)


def test_error_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rate([["a"], ["b"]], [["a"]])
    with pytest.raises(ValueError, match="non-empty reference"):
        error_rate([[]], [["a"]])
