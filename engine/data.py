"""Small data sets as arrays. Nothing here downloads: data are generated, shipped with
the package (`engine/datasets/digits.npz`, scikit-learn's copy of the UCI digits), or
read from a file the user names.

A `Dataset` holds `x: [n, ...]`, `y: [n, d_out]` (float targets for MSE, one-hot
for classification) and optionally a test split `x_test`, `y_test`. Your own arrays:
`Dataset(x, y)` with x of shape [n, features] (images [n, h, w, c]) and y of shape
[n, d_out], e.g. `y[:, None]` for a scalar target and `one_hot(labels, classes)` for
class labels; `check_dataset(dataset)` says what is wrong with one, naming the fix.
`named("chebyshev-3-20" | "digits" | "modular-add-97-0.3" | "path.npz", n_train)` picks
one by name, as the experiments' configs do.

Grokking tasks, generated from a data seed that is an argument (so a config that names
it names the data; every run of a sweep shares the data, and a sweep over data seeds is
a static axis, `static={"data_seed": [0, 1]}` with a builder that passes it here):

    modular      every pair (a, b) of Z_p^2 labelled (a op b) mod p, op in + - * /
                 (Power et al. 2022; Prieto et al. 2025), a random training fraction
    xor_clusters the XOR cluster data of Xu et al. 2023 (benign overfitting, grokking)
    quadratic_index  y = (beta . x)^2 / 2 on Gaussian x (Kumar et al. 2023, lazy -> rich);
                 its beta: quadratic_index_direction
"""
from __future__ import annotations

import os
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ConfigError, choose, require


class Dataset(NamedTuple):
    """x: [n, ...] inputs; y: [n, d_out] float targets; x_test, y_test: a test split
    (or None); rank: [n] int32, each example's place in a random order fixed by a data
    seed (or None), for a split that is a hyperparameter of the run: with
    `simulation(train_fraction=f)` the examples of rank < floor(f n) train and the rest
    are the test set, per run (`ranked`; a ranked data set has no x_test)."""
    x: jax.Array
    y: jax.Array
    x_test: jax.Array | None = None
    y_test: jax.Array | None = None
    rank: jax.Array | None = None

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
    if data.rank is not None:
        require(data.x_test is None, "data.rank", "a ranked data set splits its own examples into train and test",
                "drop x_test/y_test (the test set is the examples not in training), or the rank")
        require(np.array_equal(np.sort(np.asarray(data.rank)), np.arange(data.n)), "data.rank",
                f"is not a permutation of 0..{data.n - 1}", "build it with engine.data.ranked(x, y, seed)")


def _as_dataset(x, y, x_test=None, y_test=None) -> Dataset:
    """float32 device arrays; targets as [n, d_out]. Shaped in numpy: nothing compiles."""
    arr = lambda a: None if a is None else jax.device_put(np.asarray(a, np.float32))
    as_2d = lambda a: None if a is None else arr(np.asarray(a).reshape(np.shape(a)[0], -1))
    return Dataset(arr(x), as_2d(y), arr(x_test), as_2d(y_test))


def split_count(train_fraction, n: int):
    """floor(train_fraction * n), forgiving rounding just below an integer
    (0.29 * 100 = 28.999...): the training set's size, in numpy or traced."""
    return np.floor(train_fraction * n + 1e-3) if isinstance(train_fraction, (int, float)) else \
        jnp.floor(train_fraction * n + 1e-3)


def ranked(x, y, seed: int = 0, order=None) -> Dataset:
    """A data set whose split into train and test is a hyperparameter of each run
    (`simulation(train_fraction=...)`, traced, so a sweep over training fractions is
    one program): every example in x, y and its `rank` in a random order drawn from
    numpy's `default_rng(seed)` (or in `order`, a permutation: the training set at
    fraction f is order[:floor(f n)]). The same seed gives the same order, so the
    training sets of larger fractions contain those of smaller ones."""
    require(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0, "seed",
            f"got {seed!r}", "use an integer data seed >= 0")
    n = np.shape(x)[0]
    order = np.random.default_rng(int(seed)).permutation(n) if order is None else np.asarray(order)
    rank = np.empty(n, np.int32)
    rank[order] = np.arange(n, dtype=np.int32)
    return _as_dataset(x, y)._replace(rank=jax.device_put(rank))


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


# ----------------------------------------------------------------------------- grokking tasks
def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % k for k in range(2, int(p**0.5) + 1))


def _divide(a, b, p):
    """a / b mod p = a * b^-1 (b != 0, p prime): b^-1 = b^(p-2) by Fermat's little theorem."""
    inverse = np.array([pow(int(k), p - 2, p) if k else 0 for k in range(p)], np.int64)
    return a * inverse[b] % p


# op -> (symbol, (a, b, p) -> label array); the words are the names `named` uses.
MODULAR_OPS = {
    "+": ("+", lambda a, b, p: (a + b) % p), "-": ("-", lambda a, b, p: (a - b) % p),
    "*": ("*", lambda a, b, p: a * b % p), "/": ("/", _divide),
}
MODULAR_OPS.update({w: MODULAR_OPS[o] for w, o in (("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"))})


class ModularTable(NamedTuple):
    """Every example of a modular-arithmetic task and its split (numpy, [N] each):
    a, b, label = (a op b) mod p, train (bool: in the training split); p, op (the symbol),
    train_fraction, seed: what drew it. N = p^2, or p (p - 1) for "/" (b != 0)."""
    a: np.ndarray
    b: np.ndarray
    label: np.ndarray
    train: np.ndarray
    p: int
    op: str
    train_fraction: float
    seed: int


def modular_table(p: int, op: str = "+", train_fraction: float = 0.3, seed: int = 0) -> ModularTable:
    """The pairs (a, b) in Z_p^2 (b != 0 for "/") in lexicographic order, labelled
    (a op b) mod p, and a split: floor(train_fraction * N) pairs, drawn by a permutation
    from numpy's `default_rng(seed)`, train; the rest test. Division is multiplication
    by the modular inverse, so it needs p prime. ConfigError for a bad p, op, fraction
    or seed."""
    require(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 2, "p", f"got {p!r}",
            "use an integer modulus >= 2, e.g. 97 or 113")
    symbol, label_of = choose(op, MODULAR_OPS, "op")
    require(symbol != "/" or _is_prime(int(p)), "p", f"division needs a prime modulus, {p} is not prime "
            "(some b have no inverse)", "use a prime such as 97 or 113, or another op")
    require(isinstance(train_fraction, (int, float, np.floating)) and not isinstance(train_fraction, bool)
            and 0 < train_fraction < 1, "train_fraction", f"got {train_fraction!r}",
            "use a number in (0, 1), e.g. 0.3")
    require(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0, "seed",
            f"got {seed!r}", "use an integer data seed >= 0")
    p = int(p)
    a, b = (g.ravel() for g in np.meshgrid(np.arange(p), np.arange(1 if symbol == "/" else 0, p), indexing="ij"))
    n_train = int(split_count(float(train_fraction), a.size))
    require(1 <= n_train < a.size, "train_fraction", f"{train_fraction} of {a.size} pairs is {n_train} "
            "training pairs", f"use a fraction that keeps between 1 and {a.size - 1} pairs")
    train = np.zeros(a.size, bool)
    train[modular_order(a.size, seed)[:n_train]] = True
    return ModularTable(a, b, label_of(a, b, p), train, p, symbol, float(train_fraction), int(seed))


def modular_order(n: int, seed: int) -> np.ndarray:
    """The random order of the N pairs that a data seed draws: the training split at
    fraction f is its first floor(f N), static (`modular`) or traced (`modular_ranked`)."""
    return np.random.default_rng(int(seed)).permutation(n)


def modular_inputs(a, b, p: int, encoding: str = "one_hot") -> np.ndarray:
    """The inputs of pairs (a, b): "one_hot", the concatenated one-hots [n, 2p] (for an
    MLP), or "tokens", the sequence (a, b, =) as token ids [n, 3] with "=" the token p
    (vocabulary p + 1; for `engine.models.transformer(p + 1, 3, out_dim=p)`, which reads
    the last position). Token ids are held as floats, exactly (the transformer casts)."""
    require(encoding in ("one_hot", "tokens"), "encoding", f"unknown value {encoding!r}", "use one_hot or tokens")
    a, b = np.asarray(a, int), np.asarray(b, int)
    if encoding == "tokens":
        return np.stack([a, b, np.full_like(a, p)], axis=1).astype(np.float32)
    return np.concatenate([one_hot(a, p), one_hot(b, p)], axis=1)


def modular(p: int = 97, op: str = "+", train_fraction: float = 0.3, seed: int = 0,
            encoding: str = "one_hot") -> Dataset:
    """Modular arithmetic (Power et al. 2022): the training split of `modular_table(p, op,
    train_fraction, seed)` in x, y and the rest in x_test, y_test; inputs as
    `modular_inputs(encoding)` ([n, 2p] one-hots or [n, 3] tokens), targets one-hot
    [n, p] (for cross-entropy, or MSE on one-hot). The same arguments give the same
    split; `seed` is the data seed, independent of the runs' seeds."""
    t = modular_table(p, op, train_fraction, seed)
    x, y = modular_inputs(t.a, t.b, t.p, encoding), one_hot(t.label, t.p)
    return _as_dataset(x[t.train], y[t.train], x[~t.train], y[~t.train])


def modular_ranked(p: int = 97, op: str = "+", seed: int = 0, encoding: str = "one_hot") -> Dataset:
    """Every pair of `modular_table(p, op, ., seed)`, ranked in the data seed's order
    (`ranked`), so that the training fraction is a hyperparameter of each run
    (`simulation(train_fraction=f)`): at fraction f a run trains on exactly the pairs
    `modular(p, op, f, seed)` trains on and tests on the rest."""
    t = modular_table(p, op, 0.5, seed)
    return ranked(modular_inputs(t.a, t.b, t.p, encoding), one_hot(t.label, t.p), order=modular_order(t.a.size, seed))


def _check_count(field: str, v, lo: int = 1) -> None:
    require(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo, field, f"got {v!r}",
            f"use an integer >= {lo}")


def xor_clusters(n: int = 200, d: int = 1000, mean_norm: float | None = None, label_noise: float = 0.1,
                 n_test: int = 1000, seed: int = 0, noisy_test: bool = True) -> Dataset:
    """XOR cluster data (Xu, Wang, Frei, Vardi & Hu 2023): each example picks one of four
    cluster means +mu_1, -mu_1, +mu_2, -mu_2 uniformly, x = mean + xi with xi ~ N(0, I_d);
    its clean class is 1 for +-mu_1 and 0 for +-mu_2 (class 1 iff the signs of x along
    mu_1 + mu_2 and mu_1 - mu_2 agree: an XOR, not linearly separable), flipped with
    probability `label_noise` (eta). mu_1 = ||mu|| e_1 and
    mu_2 = ||mu|| e_2: orthogonal, of equal norm; any orthogonal pair is the same task up
    to a rotation, which isotropic noise and a Gaussian initialization do not see.
    x: [n, d]; y: one-hot [n, 2] (softmax cross-entropy on two logits is the logistic
    loss of their difference); a test set of `n_test` examples, its labels flipped too
    (`noisy_test`: then the best test accuracy is 1 - eta) or clean.

    Defaults are CPU-sized: n = 200, d = 1000, eta = 0.1 and ||mu|| = d^0.3 (~7.9:
    ||mu||^2 = 2 sqrt(d), so a cluster stands out of the noise along its mean while the
    noise, of norm sqrt(d) ~ 32, dominates x). They are NOT the paper's high-dimensional
    regime, where the training points are nearly orthogonal so that one GD step fits
    every (noisy) label (d >> n and d >> sqrt(n) ||mu||^2) and yet the means carry enough
    signal to be learned (||mu||^2 >> sqrt(d / n)); here d = 5 n and sqrt(n) ||mu||^2 ~ 890
    ~ d. `experiments.xor_cluster_grokking` uses n = 100, d = 10^4, ||mu|| = 20."""
    _check_count("n", n)
    _check_count("d", d, 2)
    _check_count("n_test", n_test, 0)
    _check_count("seed", seed, 0)
    mean_norm = float(d) ** 0.3 if mean_norm is None else mean_norm
    require(isinstance(mean_norm, (int, float, np.floating)) and mean_norm > 0, "mean_norm", f"got {mean_norm!r}",
            "use a positive cluster-mean norm, or None for d**0.3")
    require(isinstance(label_noise, (int, float, np.floating)) and 0 <= label_noise < 0.5, "label_noise",
            f"got {label_noise!r}", "use a flip probability in [0, 0.5)")
    rng = np.random.default_rng(int(seed))

    def draw(m, flip):
        cluster = rng.integers(0, 4, m)                  # 0: +mu_1, 1: -mu_1, 2: +mu_2, 3: -mu_2
        x = rng.standard_normal((m, d))
        x[np.arange(m), np.where(cluster < 2, 0, 1)] += np.where(cluster % 2 == 0, mean_norm, -mean_norm)
        label = (cluster < 2).astype(int)
        if flip:
            label = np.where(rng.random(m) < label_noise, 1 - label, label)
        return x, one_hot(label, 2)

    x, y = draw(n, True)
    xt, yt = draw(n_test, noisy_test) if n_test else (None, None)
    return _as_dataset(x, y, xt, yt)


def quadratic_index_direction(d: int = 100, seed: int = 0) -> np.ndarray:
    """beta of `quadratic_index(d, ..., seed)`: [d], uniform on the unit sphere (a
    normalized Gaussian from numpy's `default_rng([seed, 0])`), e.g. to measure how the
    first-layer weights align with it."""
    _check_count("d", d)
    _check_count("seed", seed, 0)
    beta = np.random.default_rng([int(seed), 0]).standard_normal(int(d))
    return beta / np.linalg.norm(beta)


def quadratic_index(d: int = 100, n: int = 550, n_test: int = 1000, seed: int = 0) -> Dataset:
    """The polynomial regression of Kumar, Bordelon, Gershman & Pehlevan 2023 (grokking as
    the transition from lazy to rich training): x ~ N(0, I_d), y = (beta . x)^2 / 2 with
    beta a fixed unit vector drawn uniformly on the sphere from `seed`
    (`quadratic_index_direction`), so beta . x ~ N(0, 1) and y has mean 1/2 whatever d;
    d = 100 and n = 550 training points as in the paper, `n_test` test points (inputs
    from `default_rng([seed, 1])`). x: [n, d], y: [n, 1]."""
    _check_count("n", n)
    _check_count("n_test", n_test, 0)
    beta = quadratic_index_direction(d, seed)
    rng = np.random.default_rng([int(seed), 1])
    x, xt = rng.standard_normal((n, d)), rng.standard_normal((n_test, d))
    target = lambda z: 0.5 * (z @ beta) ** 2
    return _as_dataset(x, target(x), xt if n_test else None, target(xt) if n_test else None)


def _modular_named(name: str, seed: int) -> Dataset:
    """"modular-OP-P-FRACTION[-tokens]", OP in add, sub, mul, div."""
    parts = name.split("-")
    fix = "write modular-OP-P-FRACTION[-tokens], OP one of add, sub, mul, div, e.g. modular-add-97-0.3"
    tokens = parts[-1] == "tokens"
    parts = parts[:-1] if tokens else parts
    require(len(parts) == 4 and parts[1] in ("add", "sub", "mul", "div") and parts[2].isdigit(), "data",
            f"got {name!r}", fix)
    try:
        fraction = float(parts[3])
    except ValueError:
        raise ConfigError("data", f"got {name!r}", fix) from None
    return modular(int(parts[2]), parts[1], fraction, seed, "tokens" if tokens else "one_hot")


def named(name: str, n_train: int | None = None, seed: int = 0) -> Dataset:
    """A data set by name: "chebyshev-K-N" (`chebyshev(K, N)`), "digits" (the first
    `n_train` train), "modular-OP-P-FRACTION" (`modular(P, OP, FRACTION, seed)`, OP one
    of add, sub, mul, div; "-tokens" at the end for the transformer's token encoding;
    n_train is ignored: the fraction is in the name), or the path of the user's .npz
    (images flattened, each pixel standardized by the training images' mean and std,
    the first `n_train` kept). `seed`: the data seed of generated splits (modular).
    XOR clusters and the quadratic index task have continuous knobs (noise rate, mean
    norm), so they are called as functions, not named."""
    require(isinstance(name, str), "data", f"got {name!r}", "use chebyshev-3-20, digits or a .npz path")
    if name.startswith("chebyshev-"):
        parts = name.split("-")
        require(len(parts) == 3 and all(p.isdigit() for p in parts[1:]), "data", f"got {name!r}",
                "write chebyshev-K-N, e.g. chebyshev-3-20")
        return chebyshev(int(parts[1]), int(parts[2]))
    if name == "digits":
        return digits(n_train)
    if name.startswith("modular-"):
        return _modular_named(name, seed)
    if name.endswith(".npz"):
        return from_npz(name, n=n_train, flatten=True, standardize=True)
    raise ConfigError("data", f"unknown data set {name!r}",
                      "use chebyshev-K-N, digits, modular-OP-P-FRACTION, or the path of an .npz with x_train, "
                      "y_train")
