"""Small data sets as arrays. Nothing here downloads: data are generated, shipped with
the package (`engine/datasets/digits.npz`, scikit-learn's copy of the UCI digits), or
read from a file the user names.

A `Dataset` holds `x: [n, ...]`, `y: [n, d_out]` (float targets for MSE, one-hot
for classification) and optionally a test split `x_test`, `y_test`. Your own arrays:
`Dataset(x, y)` with x of shape [n, features] (images [n, h, w, c]) and y of shape
[n, d_out], e.g. `y[:, None]` for a scalar target and `one_hot(labels, classes)` for
class labels; `check_dataset(dataset)` says what is wrong with one, naming the fix.
`named("chebyshev-3-20" | "digits" | "path.npz", n_train)` picks one by name, as the
experiments' configs do.
"""
from __future__ import annotations

import os
from importlib import resources
from typing import NamedTuple

import jax
import numpy as np

from engine.errors import ConfigError, require


class Dataset(NamedTuple):
    x: jax.Array
    y: jax.Array
    x_test: jax.Array | None = None
    y_test: jax.Array | None = None

    @property
    def n(self) -> int:
        return self.x.shape[0]


def _check_split(x, y, xname: str, yname: str) -> None:
    require(np.ndim(x) >= 2, f"data.{xname}", f"has shape {np.shape(x)}: one number per example",
            f"give {xname} as [n, features], e.g. {xname}[:, None] for one feature")
    require(np.ndim(y) == 2, f"data.{yname}", f"has shape {np.shape(y)}",
            f"give targets as [n, d_out], e.g. {yname}[:, None] for a scalar target")
    require(np.shape(x)[0] == np.shape(y)[0], f"data.{yname}", f"{np.shape(y)[0]} targets for "
            f"{np.shape(x)[0]} inputs", "give one target per input")
    dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    require(np.issubdtype(dtype, np.floating), f"data.{yname}", f"holds {dtype} values (class labels?)",
            "give float targets: one_hot(labels, classes) for classes, e.g. engine.data.one_hot(y, 10)")


def check_dataset(data: Dataset) -> None:
    """ConfigError, naming the field and the fix, unless `data` is a Dataset with
    x: [n, ...] and float targets y: [n, d_out] (and likewise its test split)."""
    require(isinstance(data, Dataset), "data", f"got {type(data).__name__}",
            "build one with engine.data (e.g. engine.data.luo_points()) or engine.data.Dataset(x, y)")
    _check_split(data.x, data.y, "x", "y")
    require((data.x_test is None) == (data.y_test is None), "data.y_test",
            "a test split needs both x_test and y_test", "give both, or neither")
    if data.x_test is not None:
        _check_split(data.x_test, data.y_test, "x_test", "y_test")
        require(np.shape(data.x_test)[1:] == np.shape(data.x)[1:], "data.x_test",
                f"has examples of shape {np.shape(data.x_test)[1:]}, x of {np.shape(data.x)[1:]}",
                "give test inputs shaped like the training inputs")


def _as_dataset(x, y, x_test=None, y_test=None) -> Dataset:
    """float32 device arrays; targets as [n, d_out]. Shaped in numpy: nothing compiles."""
    arr = lambda a: None if a is None else jax.device_put(np.asarray(a, np.float32))
    as_2d = lambda a: None if a is None else arr(np.asarray(a).reshape(np.shape(a)[0], -1))
    return Dataset(arr(x), as_2d(y), arr(x_test), as_2d(y_test))


def luo_points() -> Dataset:
    """The three 1-D points of Luo et al. 2021: x = (-0.5, 0, 0.5), y = (-0.5, 0, 1)."""
    return _as_dataset(np.array([[-0.5], [0.0], [0.5]]), np.array([-0.5, 0.0, 1.0]))


def chebyshev(k: int, n: int) -> Dataset:
    """`n` points evenly on [-1, 1] with target T_k(x) = cos(k arccos x)
    ("chebyshev-k-n" of Cohen et al. 2021)."""
    require(isinstance(k, int) and k >= 0, "k", f"got {k!r}", "use an integer degree >= 0")
    require(isinstance(n, int) and n >= 1, "n", f"got {n!r}", "use an integer number of points >= 1")
    x = np.linspace(-1.0, 1.0, n)
    return _as_dataset(x[:, None], np.polynomial.chebyshev.chebval(x, [0] * k + [1]))


def sines(frequencies=(1, 4), n: int = 64, interval=(-np.pi, np.pi), amplitudes=None,
          n_test: int = 0) -> Dataset:
    """Sum of sines f(x) = sum_j A_j sin(k_j x) at `n` evenly spaced points of
    `interval` (and `n_test` of them as a test grid)."""
    require(len(frequencies) >= 1, "frequencies", "empty", "give at least one frequency")
    require(n >= 1, "n", f"got {n}", "use n >= 1")
    amps = np.ones(len(frequencies)) if amplitudes is None else np.asarray(amplitudes, float)
    f = lambda x: sum(a * np.sin(k * x) for a, k in zip(amps, frequencies))
    x = np.linspace(*interval, n)
    xt = np.linspace(*interval, n_test) if n_test else None
    return _as_dataset(x[:, None], f(x), None if xt is None else xt[:, None],
                       None if xt is None else f(xt))


def teacher(model, n: int, seed: int = 0, n_test: int = 0, input_dim: int | None = None,
            params=None) -> Dataset:
    """Inputs x ~ N(0, I) and targets y = teacher(x) of a `Model` (its default init
    drawn from `seed` unless `params` are given)."""
    d = input_dim or (model.layer_shapes[0][0] if model.layer_shapes else None)
    require(d is not None, "input_dim", "cannot infer the teacher's input dimension",
            "pass input_dim")
    kp, kx, kt = jax.random.split(jax.random.key(seed), 3)
    params = model.init(kp) if params is None else params
    x = jax.random.normal(kx, (n, d))
    xt = jax.random.normal(kt, (n_test, d)) if n_test else None
    return Dataset(x, model.apply(params, x), xt, None if xt is None else model.apply(params, xt))


def one_hot(labels, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[np.asarray(labels, int)]


def point(x: float = 0.0, y: float = 0.0) -> Dataset:
    """The single example (x, y), 1-D input and target (e.g. the uv model's (1, 0))."""
    return _as_dataset(np.array([[x]]), np.array([y]))


def standardized(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """x with each feature centred and scaled by the training set's mean and std
    (features with zero spread are only centred)."""
    mu, sd = train.mean(0), train.std(0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def digits(n_train: int | None = None, standardize: bool = True, images: bool = False) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 64 features, 10 classes), shipped with
    the package. Features standardized (per pixel, train statistics), one-hot targets;
    the first `n_train` examples train, the rest test (all train if None). x: [n, 64],
    or [n, 8, 8, 1] with `images=True` (for `engine.models.cnn`)."""
    with resources.files("engine.datasets").joinpath("digits.npz").open("rb") as f:
        raw = np.load(f)
        x, labels = raw["images"].astype(np.float32), raw["labels"]
    n_train = x.shape[0] if n_train is None else n_train
    require(1 <= n_train <= x.shape[0], "n_train", f"got {n_train}",
            f"use 1 <= n_train <= {x.shape[0]}")
    if standardize:
        x = standardized(x, x[:n_train])
    y = one_hot(labels, 10)
    if images:
        x = x.reshape(-1, 8, 8, 1)
    rest = n_train < x.shape[0]
    return _as_dataset(x[:n_train], y[:n_train], x[n_train:] if rest else None,
                       y[n_train:] if rest else None)


def from_npz(path, n: int | None = None, n_test: int | None = None, classes: int | None = None,
             flatten: bool = False, standardize: bool = False) -> Dataset:
    """The user's own arrays: an .npz with `x_train`, `y_train` and optionally `x_test`,
    `y_test` (e.g. a CIFAR-10 file they have). Integer labels `[n]` become one-hot
    targets (`classes` inferred if not given); `n` / `n_test` keep the first examples;
    `flatten` reshapes images to vectors; `standardize` centres and scales each feature
    by the (kept) training examples' statistics, as Cohen et al. 2021 do for CIFAR-10."""
    path = os.fspath(path)
    require(os.path.isfile(path), "path", f"no file at {path!r}", "give the path of an .npz file")
    try:
        raw = dict(np.load(path))
    except Exception as e:  # numpy raises several types for a bad file
        raise ConfigError("path", f"cannot read {path!r} as .npz ({e})",
                          "save it with numpy.savez(path, x_train=..., y_train=...)") from None
    for k in ("x_train", "y_train"):
        require(k in raw, "path", f"{path!r} has no array {k!r} (it has {sorted(raw)})",
                "save it with numpy.savez(path, x_train=..., y_train=...)")
    x, y = raw["x_train"], raw["y_train"]
    for k, a in raw.items():
        require(a.dtype.kind in "biuf", k, f"holds {a.dtype} values", "store numbers (float or integer labels)")
        require(a.ndim >= 1 and a.shape[0] >= 1, k, f"has shape {a.shape}", "give at least one example")
        require(bool(np.isfinite(a).all()), k, "holds NaN or infinite values", "clean or drop those examples")
    require(x.shape[0] == y.shape[0], "y_train",
            f"{y.shape[0]} targets for {x.shape[0]} inputs", "give one target per input")
    xt, yt = raw.get("x_test"), raw.get("y_test")
    integer = np.issubdtype(y.dtype, np.integer) and y.ndim == 1
    if integer:
        classes = classes or int(max(y.max(), -1 if yt is None else yt.max())) + 1
        y = one_hot(y, classes)
        yt = None if yt is None else one_hot(yt, classes)
    if n is not None:
        require(1 <= n <= x.shape[0], "n", f"got {n}", f"use 1 <= n <= {x.shape[0]}")
        x, y = x[:n], y[:n]
    if xt is not None and n_test is not None:
        xt, yt = xt[:n_test], yt[:n_test]
    if flatten:
        x = x.reshape(x.shape[0], -1)
        xt = None if xt is None else xt.reshape(xt.shape[0], -1)
    if standardize:
        x, xt = standardized(x.astype(np.float32), x), None if xt is None else standardized(xt.astype(np.float32), x)
    return _as_dataset(x, y, xt, yt)


def named(name: str, n_train: int | None = None) -> Dataset:
    """A data set by name: "chebyshev-K-N" (`chebyshev(K, N)`), "digits" (the first
    `n_train` train), or the path of the user's .npz (images flattened, each pixel
    standardized by the training images' mean and std, the first `n_train` kept)."""
    require(isinstance(name, str), "data", f"got {name!r}", "use chebyshev-3-20, digits or a .npz path")
    if name.startswith("chebyshev-"):
        parts = name.split("-")
        require(len(parts) == 3 and all(p.isdigit() for p in parts[1:]), "data", f"got {name!r}",
                "write chebyshev-K-N, e.g. chebyshev-3-20")
        return chebyshev(int(parts[1]), int(parts[2]))
    if name == "digits":
        return digits(n_train)
    if name.endswith(".npz"):
        return from_npz(name, n=n_train, flatten=True, standardize=True)
    raise ConfigError("data", f"unknown data set {name!r}",
                      "use chebyshev-K-N, digits, or the path of an .npz with x_train, y_train")
