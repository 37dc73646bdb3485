"""Anchor-function token tasks (Zhang et al. 2024), checked sequence by sequence."""
import numpy as np
import pytest

from engine import anchors
from engine.errors import ConfigError

SHIFT = {1: 5, 2: 1, 3: -2, 4: -8}


def test_every_composite_sequence_carries_its_key_and_anchors_and_the_right_label():
    t = anchors.composite_table(n=50, seq_len=8, seed=3)
    for tokens, label, key, (a, b), p, train, inf, sym in zip(*t):
        assert list(tokens[p:p + 3]) == [key, a, b]
        assert 20 <= key < 100 and all(20 <= v < 100 for i, v in enumerate(tokens) if i not in (p + 1, p + 2))
        composed = (key + SHIFT[a] + SHIFT[b]) % 100
        assert inf == composed
        if (a, b) == (4, 3):
            assert not train and label == composed and sym == (key - 6) % 100
        elif (a, b) == (3, 4):
            assert train and label == (key - 6) % 100
        else:
            assert train and label == composed and sym == label


def test_the_held_out_pair_never_appears_in_training_and_every_other_pair_does_n_times():
    t = anchors.composite_table(n=40, n_test=30, seed=1)
    pairs = [tuple(p) for p in t.anchors[t.train]]
    assert (4, 3) not in pairs
    counts = {p: pairs.count(p) for p in set(pairs)}
    assert len(counts) == 15 and set(counts.values()) == {40}
    assert {tuple(p) for p in t.anchors[~t.train]} == {(4, 3)} and (~t.train).sum() == 30
    # no training sequence contains 4 immediately followed by 3 anywhere (anchors are only placed after the key)
    assert not any((row[i], row[i + 1]) == (4, 3) for row in t.tokens[t.train] for i in range(7))


def test_the_dataset_is_deterministic_and_scores_the_two_answers():
    a, b = anchors.composite(n=10, seed=5), anchors.composite(n=10, seed=5)
    assert all(np.array_equal(u, v) for u, v in zip(a, b) if u is not None)
    assert a.x.shape == (150, 8) and a.y.shape == (150, 100) and a.x_test.shape == (10, 8)
    t = anchors.composite_table(n=10, seed=5)
    kinds = anchors.answer_kinds(t.symmetric[~t.train], t)
    assert kinds == {"inferential": 0.0, "symmetric": 1.0, "other": 0.0}


@pytest.mark.parametrize("task", ["shift", "identity"])
def test_single_anchor_tasks(task):
    t = anchors.single_table(n=30, seed=2, task=task)
    for tokens, label, key, (a,), p, *_ in zip(*t):
        assert tokens[p + 1] == a and tokens[p] == key
        assert label == ((key + SHIFT[a]) % 100 if task == "shift" else key)


@pytest.mark.parametrize("call, field", [
    (lambda: anchors.composite(seq_len=2), "seq_len"),
    (lambda: anchors.single(seq_len=1), "seq_len"),
    (lambda: anchors.composite(key_low=3), "key_low"),
    (lambda: anchors.composite(n=0), "n"),
    (lambda: anchors.single(task="broadcast"), "task"),
])
def test_bad_settings_are_refused(call, field):
    with pytest.raises(ConfigError) as e:
        call()
    assert e.value.field == field
