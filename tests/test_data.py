import numpy as np
import pytest

from engine import data, models
from engine.errors import ConfigError


def test_luo_points():
    d = data.luo_points()
    np.testing.assert_array_equal(d.x[:, 0], [-0.5, 0.0, 0.5])
    np.testing.assert_array_equal(d.y[:, 0], [-0.5, 0.0, 1.0])


def test_chebyshev_is_t_k():
    d = data.chebyshev(3, 20)
    x = np.asarray(d.x[:, 0])
    assert d.x.shape == (20, 1) and x[0] == -1 and x[-1] == 1
    np.testing.assert_allclose(d.y[:, 0], 4 * x**3 - 3 * x, atol=1e-6)


def test_sines_and_test_grid():
    d = data.sines((1, 3), n=50, n_test=7)
    x = np.asarray(d.x[:, 0])
    np.testing.assert_allclose(d.y[:, 0], np.sin(x) + np.sin(3 * x), atol=1e-5)
    assert d.x_test.shape == (7, 1)


def test_digits_shipped_standardized_one_hot():
    d = data.digits(n_train=1500)
    assert d.x.shape == (1500, 64) and d.x_test.shape == (297, 64)
    np.testing.assert_allclose(np.asarray(d.y).sum(1), 1.0)
    assert abs(float(np.asarray(d.x).mean())) < 1e-4


def test_teacher():
    t = models.mlp((3, 5, 2), "tanh")
    d = data.teacher(t, 10, seed=1, n_test=4)
    assert d.x.shape == (10, 3) and d.y.shape == (10, 2) and d.y_test.shape == (4, 2)
    np.testing.assert_array_equal(d.y, data.teacher(t, 10, seed=1).y)


def test_from_npz_roundtrip_and_subset(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.normal(size=(30, 4, 4, 3)), y_train=rng.integers(0, 10, 30),
             x_test=rng.normal(size=(8, 4, 4, 3)), y_test=rng.integers(0, 10, 8))
    d = data.from_npz(path, n=20, flatten=True, classes=10)
    assert d.x.shape == (20, 48) and d.y.shape == (20, 10) and d.x_test.shape == (8, 48)


def test_from_npz_errors(tmp_path):
    with pytest.raises(ConfigError, match="path"):
        data.from_npz(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(ConfigError, match="cannot read"):
        data.from_npz(bad)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, inputs=np.zeros(3))
    with pytest.raises(ConfigError, match="x_train"):
        data.from_npz(wrong)
