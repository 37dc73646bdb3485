"""Grokking tasks (issue 16, item 1)."""
import numpy as np
import pytest

from engine import data
from engine.errors import ConfigError

PYTHON_OPS = {"+": lambda a, b, p: (a + b) % p, "-": lambda a, b, p: (a - b) % p,
              "*": lambda a, b, p: (a * b) % p, "/": lambda a, b, p: (a * pow(b, -1, p)) % p}


def decode(d: data.Dataset, p: int, x, y):
    """(a, b, label) triples of one-hot inputs [n, 2p] and targets [n, p]."""
    x, y = np.asarray(x), np.asarray(y)
    return list(zip(x[:, :p].argmax(1).tolist(), x[:, p:].argmax(1).tolist(), y.argmax(1).tolist()))


@pytest.mark.parametrize("op,p", [("+", 10), ("-", 10), ("*", 10), ("/", 11)])
def test_modular_labels_every_pair_once_in_a_disjoint_split(op, p):
    d = data.modular(p, op, 0.3, seed=3)
    train, test = decode(d, p, d.x, d.y), decode(d, p, d.x_test, d.y_test)
    pairs = [(a, b) for a, b, _ in train + test]
    expected = [(a, b) for a in range(p) for b in range(1 if op == "/" else 0, p)]
    assert sorted(pairs) == expected                          # every pair exactly once, none twice
    assert len(train) == int(0.3 * len(expected))
    for a, b, c in train + test:
        assert c == PYTHON_OPS[op](a, b, p), (a, op, b)       # Python's own modular arithmetic
    np.testing.assert_array_equal(np.asarray(d.x).sum(1), 2)  # two one-hots
    np.testing.assert_array_equal(np.asarray(d.y).sum(1), 1)


def test_modular_split_follows_the_data_seed_only():
    same = [data.modular_table(13, "+", 0.4, seed=5) for _ in range(2)]
    np.testing.assert_array_equal(same[0].train, same[1].train)
    other = data.modular_table(13, "+", 0.4, seed=6)
    assert (other.train != same[0].train).any() and other.train.sum() == same[0].train.sum()
    assert same[0].seed == 5 and same[0].op == "+" and same[0].p == 13   # recorded with the split
    # the encodings share the split: tokens (a, b, =) with "=" the token p
    one_hot, tokens = data.modular(13, "add", 0.4, 5), data.modular(13, "+", 0.4, 5, encoding="tokens")
    assert tokens.x.shape == (67, 3) and tokens.x_test.shape == (169 - 67, 3)
    np.testing.assert_array_equal(np.asarray(tokens.x)[:, :2], np.stack(decode(one_hot, 13, one_hot.x, one_hot.y))[:, :2])
    np.testing.assert_array_equal(np.asarray(tokens.x)[:, 2], 13)
    np.testing.assert_array_equal(tokens.y, one_hot.y)
    np.testing.assert_array_equal(data.named("modular-add-13-0.4", seed=5).x, one_hot.x)
    np.testing.assert_array_equal(data.named("modular-add-13-0.4-tokens", seed=5).x, tokens.x)


@pytest.mark.parametrize("call,field", [
    (lambda: data.modular(1), "p"),
    (lambda: data.modular(97, "+", 0.0), "train_fraction"),
    (lambda: data.modular(97, "+", 1.0), "train_fraction"),
    (lambda: data.modular(97, "+", -0.2), "train_fraction"),
    (lambda: data.modular(12, "/"), "p"),
    (lambda: data.modular(97, "^"), "op"),
    (lambda: data.modular(97, encoding="bits"), "encoding"),
    (lambda: data.modular(5, "+", 0.01), "train_fraction"),   # no training pair left
    (lambda: data.named("modular-pow-97-0.3"), "data"),
])
def test_bad_grokking_data_is_one_line_config_error(call, field):
    with pytest.raises(ConfigError) as e:
        call()
    assert e.value.field == field and "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_xor_clusters_labels_are_the_xor_of_the_clusters_flipped_at_rate_eta():
    d = data.xor_clusters(n=4000, d=20, mean_norm=40.0, label_noise=0.2, n_test=4000, seed=1, noisy_test=False)
    x, label = np.asarray(d.x), np.asarray(d.y).argmax(1)
    on_mu1 = np.abs(x[:, 0]) > np.abs(x[:, 1])                # mu_1 = |mu| e_1, mu_2 = |mu| e_2
    flipped = (label == 1) != on_mu1
    assert 0.18 < flipped.mean() < 0.22                        # eta = 0.2, 4000 draws: std 0.006
    xt, lt = np.asarray(d.x_test), np.asarray(d.y_test).argmax(1)
    np.testing.assert_array_equal(lt == 1, np.abs(xt[:, 0]) > np.abs(xt[:, 1]))   # clean test labels
    assert abs(np.abs(x[:, 2:]).mean() - np.sqrt(2 / np.pi)) < 0.01                # N(0, 1) noise elsewhere
    small = data.xor_clusters()
    assert small.x.shape == (200, 1000) and small.y.shape == (200, 2) and small.x_test.shape == (1000, 1000)
    np.testing.assert_array_equal(small.x, data.xor_clusters().x)


def test_quadratic_index_is_half_the_square_of_a_unit_projection():
    d = data.quadratic_index(seed=2)
    beta = data.quadratic_index_direction(100, seed=2)
    assert d.x.shape == (550, 100) and d.y.shape == (550, 1) and d.x_test.shape == (1000, 100)
    assert abs(np.linalg.norm(beta) - 1) < 1e-12
    for x, y in ((d.x, d.y), (d.x_test, d.y_test)):
        np.testing.assert_allclose(np.asarray(y)[:, 0], 0.5 * (np.asarray(x, np.float64) @ beta) ** 2,
                                   rtol=1e-5, atol=1e-6)  # x is held in float32
    assert 0.4 < float(np.mean(d.y_test)) < 0.6                # E y = 1/2
    assert not np.allclose(beta, data.quadratic_index_direction(100, seed=3))
