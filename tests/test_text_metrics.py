"""Edit distance and error rates against hand-counted examples."""

import pytest

from mmtok.metrics import edit_distance, error_rate, error_rate_difference_interval, error_rate_interval


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


def _sentences(error_every: int, count: int = 200) -> tuple[list[list[str]], list[list[str]]]:
    """``count`` five-symbol sentences; every ``error_every``-th has two substitutions."""
    references = [list("abcde") for _ in range(count)]
    hypotheses = [list("xycde") if i % error_every == 0 else list("abcde") for i in range(count)]
    return references, hypotheses


def test_error_rate_interval_brackets_the_rate_and_narrows_with_more_sentences():
    references, hypotheses = _sentences(error_every=4)
    rate = error_rate(references, hypotheses)  # 50 of 200 sentences with 2 of 5 wrong: 0.1
    low, high = error_rate_interval(references, hypotheses, seed=1)
    assert rate == pytest.approx(0.1)
    assert low < rate < high and high - low < 0.1
    # the binomial standard error of the fraction of wrong sentences, times 2/5 symbols, times ±1.96
    assert high - low == pytest.approx(2 * 1.96 * 0.4 * (0.25 * 0.75 / 200) ** 0.5, rel=0.25)
    wide_low, wide_high = error_rate_interval(references[:20], hypotheses[:20], seed=1)
    assert wide_high - wide_low > high - low
    assert error_rate_interval(references, hypotheses, seed=1) == (low, high)  # seeded


def test_paired_difference_interval_cancels_shared_errors_and_finds_the_better_system():
    references, worse = _sentences(error_every=2)
    _, better = _sentences(error_every=4)
    low, high = error_rate_difference_interval(references, worse, better)
    assert 0 < low < error_rate(references, worse) - error_rate(references, better) < high
    assert error_rate_difference_interval(references, better, better) == (0.0, 0.0)
    flipped = error_rate_difference_interval(references, better, worse)
    assert flipped == (-high, -low)


def test_intervals_reject_bad_input():
    with pytest.raises(ValueError, match="at least one sentence"):
        error_rate_interval([], [])
    with pytest.raises(ValueError, match="confidence"):
        error_rate_interval([["a"]], [["a"]], confidence=1.5)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rate_difference_interval([["a"], ["b"]], [["a"], ["b"]], [["a"]])
