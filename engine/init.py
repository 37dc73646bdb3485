"""Initialization scale as data.

An `Initializer(name, defaults, sample)` draws parameters with `sample(key, hparams)`,
where `hparams` is a dict of scalars that may be traced (so `jax.vmap` runs a whole
grid of initialization scales at once); `defaults` names the hyperparameters it reads
and their values when a sweep does not set them.

MLP schemes draw W_l = std_l * Z with Z ~ N(0, 1) in the layout of `engine.models.mlp`:
- `scaled`:      the model's own init, times `init_scale` (any model, flax ones too);
- `standard`:    LeCun / He / Xavier, std = init_scale * gain_l * sqrt(g / fan), biases 0;
- `cohen_small`: Xavier with gain 1.9 on the first layer (Cohen et al. 2021's small nets);
- `width_power`: std_l = m^-gamma (per layer: `gamma_0`, `gamma_1`, ...), m the hidden
                 width of the layer, biases drawn like the weights they sit with;
- `fan_in_power`: any model (flax ones too): every weight matrix and embedding
                 N(0, (d_in^-gamma)^2), d_in its input dimension; biases 0, LayerNorm
                 scales 1 (Zhang et al. 2024's initialization rate gamma for transformers);
- `constant_std`: the same leaves N(0, init_std^2), one std at every width (GPT-2's 0.02);
- `luo`:         two-layer (gamma, gamma') of Luo et al. 2021 (JMLR 22(71));
- `antisymmetric(scheme)`: mirrors the last hidden layer with negated output weights,
                 so f(x; theta_0) = 0 up to rounding (Zhang et al. 2020, Luo et al. 2021).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from engine.errors import ConfigError, require
from engine.models import Model


class Initializer(NamedTuple):
    name: str
    defaults: dict
    sample: Callable[[jax.Array, dict], Any]


def _require_mlp(model: Model, scheme: str) -> None:
    require(model.layer_shapes is not None, "init",
            f"the '{scheme}' scheme needs an MLP (engine.models.mlp), got {model.name!r}",
            "use engine.init.scaled for other models")


def _normal_layers(key, model: Model, w_std, b_std):
    """Layers {"w": w_std[l] * Z, "b": b_std[l] * Z} with Z ~ N(0, 1)."""
    keys = jax.random.split(key, len(model.layer_shapes))
    out = []
    for l, (k, (fan_in, fan_out)) in enumerate(zip(keys, model.layer_shapes)):
        kw, kb = jax.random.split(k)
        layer = {"w": w_std[l] * jax.random.normal(kw, (fan_in, fan_out))}
        if model.bias[l]:
            layer["b"] = b_std[l] * jax.random.normal(kb, (fan_out,))
        out.append(layer)
    return tuple(out)


def hidden_width(model: Model, layer: int) -> int:
    """m_l: the hidden width layer `layer` touches (fan_out of the input layer,
    fan_in of every later one)."""
    fan_in, fan_out = model.layer_shapes[layer]
    return fan_out if layer == 0 else fan_in


def point(x0: float = 1.0) -> Initializer:
    """theta_0 = {"x": [x0]} for `engine.models.scalar()`; x0 is a hyperparameter."""
    return Initializer("point", {"x0": x0}, lambda key, hp: {"x": jnp.full((1,), hp["x0"])})


def scaled(model: Model) -> Initializer:
    """theta_0 = init_scale * (the model's default draw). Any model."""
    def sample(key, hp):
        return jax.tree.map(lambda p: hp["init_scale"] * p, model.init(key))
    return Initializer("scaled", {"init_scale": 1.0}, sample)


_GAINS = {"lecun": (1.0, "in"), "he": (2.0, "in"), "xavier": (2.0, "avg")}


def standard(model: Model, kind: str = "lecun", gains=None) -> Initializer:
    """std_l = init_scale * gain_l * sqrt(g / fan): LeCun (g = 1, fan_in), He (2,
    fan_in), Xavier/Glorot (2, fan_in + fan_out); `gains` one factor per layer (default
    1; PyTorch's `gain` argument of xavier_normal_); biases zero. Cohen et al. 2021's
    small 1-100-1 tanh network: kind "xavier", gains (1.9, 1) (`cohen_small`)."""
    _require_mlp(model, "standard")
    if kind not in _GAINS:
        raise ConfigError("init.kind", f"unknown value {kind!r}", f"use one of {', '.join(_GAINS)}")
    gain, fan = _GAINS[kind]
    fans = [fi if fan == "in" else fi + fo for fi, fo in model.layer_shapes]
    gains = [1.0] * len(fans) if gains is None else [float(g) for g in gains]
    require(len(gains) == len(fans) and all(g > 0 for g in gains), "init.gains",
            f"got {len(gains)} gains {gains} for {len(fans)} layers", f"give {len(fans)} positive numbers, or None")

    def sample(key, hp):
        w_std = [hp["init_scale"] * g * math.sqrt(gain / f) for g, f in zip(gains, fans)]
        return _normal_layers(key, model, w_std, [0.0] * len(fans))
    suffix = "" if set(gains) == {1.0} else "-gains-" + "-".join(f"{g:g}" for g in gains)
    return Initializer(f"standard-{kind}{suffix}", {"init_scale": 1.0}, sample)


def cohen_small(model: Model) -> Initializer:
    """The initialization of Cohen et al. 2021's small networks (their code: PyTorch
    xavier_normal_ with gain 1.9 on the first layer, 1 on the others, biases zero; use
    with `mlp(..., output_bias=False)`), under which their 1-100-1 tanh network on
    chebyshev-3-20 sharpens to 2/eta."""
    return standard(model, "xavier", gains=(1.9,) + (1.0,) * (len(model.layer_shapes or ()) - 1))


def width_power(model: Model, per_layer: bool = False, gamma: float = 1.0) -> Initializer:
    """std_l = m_l^(-gamma_l) for weights and biases of layer l (m_l: `hidden_width`).

    One `gamma` for every layer, or with `per_layer=True` one `gamma_l` per layer
    (Zhou et al. 2022, three-layer phase diagram).
    """
    _require_mlp(model, "width_power")
    n = len(model.layer_shapes)
    names = [f"gamma_{l}" for l in range(n)] if per_layer else ["gamma"] * n
    widths = [float(hidden_width(model, l)) for l in range(n)]

    def sample(key, hp):
        std = [jnp.power(m, -hp[g]) for m, g in zip(widths, names)]
        return _normal_layers(key, model, std, std)
    return Initializer("width_power", {g: gamma for g in names}, sample)


def luo_betas(gamma, gamma_prime, width, alpha=1.0):
    """(beta_1, beta_2) of Luo et al. 2021 for width m:
    gamma = -log(beta1 beta2 / alpha) / log m,  gamma' = -log(beta1 / beta2) / log m,
    so beta1 = sqrt(alpha) m^-(gamma + gamma')/2 and beta2 = sqrt(alpha) m^-(gamma - gamma')/2."""
    m = float(width)
    return (math.sqrt(alpha) * jnp.power(m, -(gamma + gamma_prime) / 2),
            math.sqrt(alpha) * jnp.power(m, -(gamma - gamma_prime) / 2))


def luo(model: Model, gamma: float = 1.0, gamma_prime: float = 0.0) -> Initializer:
    """Two-layer f(x) = sum_k a_k phi(w_k . x + b_k) with a_k ~ N(0, beta1^2) and the
    input weights including the bias (w_k, b_k) ~ N(0, beta2^2 I); hyperparameters
    `gamma`, `gamma_prime` (Luo et al. 2021, with alpha = 1). An output bias, if the
    model has one, starts at zero.
    """
    _require_mlp(model, "luo")
    require(len(model.layer_shapes) == 2, "init",
            f"the 'luo' scheme is for two-layer networks, got {len(model.layer_shapes)} layers",
            "use widths=(d_in, m, d_out)")
    m = hidden_width(model, 0)

    def sample(key, hp):
        beta1, beta2 = luo_betas(hp["gamma"], hp["gamma_prime"], m)
        params = _normal_layers(key, model, [beta2, beta1], [beta2, 0.0])
        return params
    return Initializer("luo", {"gamma": gamma, "gamma_prime": gamma_prime}, sample)


def antisymmetric(model: Model, scheme: Initializer) -> Initializer:
    """Mirror the last hidden layer: units m/2..m copy units 0..m/2 (incoming weights
    and bias) and their output weights are negated, and the output bias is zero, so
    f(x; theta_0) = 0 for every x (up to float rounding in the output sum)."""
    _require_mlp(model, "antisymmetric")
    require(len(model.layer_shapes) >= 2, "init", "antisymmetric init needs a hidden layer",
            "use widths with at least one hidden layer")
    m = model.layer_shapes[-1][0]
    require(m % 2 == 0, "widths", f"antisymmetric init needs an even last hidden width, got {m}",
            "use an even width")
    half = m // 2

    def sample(key, hp):
        params = list(scheme.sample(key, hp))
        hidden = dict(params[-2])
        hidden["w"] = jnp.concatenate([hidden["w"][:, :half]] * 2, axis=1)
        if "b" in hidden:
            hidden["b"] = jnp.concatenate([hidden["b"][:half]] * 2)
        out = dict(params[-1])
        out["w"] = jnp.concatenate([out["w"][:half], -out["w"][:half]], axis=0)
        if "b" in out:
            out["b"] = jnp.zeros_like(out["b"])
        params[-2], params[-1] = hidden, out
        return tuple(params)
    return Initializer(f"antisymmetric-{scheme.name}", dict(scheme.defaults), sample)


_PROJECTIONS = ("query", "key", "value")  # flax attention DenseGeneral kernels [d_in, heads, head_dim]


def fan_in(path: tuple, shape: tuple) -> int | None:
    """d_in of one parameter leaf, named by its pytree `path` (a tuple of key names), or
    None for a leaf that is not drawn (a bias, a LayerNorm scale: ndim 1, or named
    "bias"/"b"/"scale"):
    - a dense kernel [d_in, d_out] ("kernel", an MLP's "w"): shape[0];
    - a conv kernel [k_h, k_w, c_in, c_out]: k_h k_w c_in (every dimension but the last);
    - an attention projection (query/key/value: [d_model, heads, head_dim]): d_model;
      the attention output kernel [heads, head_dim, d_model]: heads head_dim;
    - an embedding table [vocab, d_model] ("embedding") and a learned position table
      [seq_len, d_model] ("position"): d_model. A lookup multiplies the table by a
      one-hot vector, so its fan-in would be the vocabulary; Zhang et al. 2024 draw the
      embedding like every other d_model-wide layer instead, and so do we."""
    name = str(path[-1]) if path else ""
    if len(shape) <= 1 or name in ("bias", "b", "scale"):
        return None
    if name in ("embedding", "position"):
        return int(shape[-1])
    if len(path) >= 2 and str(path[-2]) in _PROJECTIONS:
        return int(shape[0])
    return int(math.prod(shape[:-1]))


def _names(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)


def _redraw(model: Model, name: str, defaults: dict, std) -> Initializer:
    """Every weight matrix and embedding of `model.init`'s pytree redrawn as
    std(d_in, hp) * Z, Z ~ N(0, 1), d_in its input dimension (`fan_in`); biases 0 and
    LayerNorm scales 1."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    fans = [fan_in(_names(path), leaf.shape) for path, leaf in leaves]

    def sample(key, hp):
        keys = jax.random.split(key, len(leaves))
        drawn = []
        for k, (path, leaf), d in zip(keys, leaves, fans):
            if d is None:
                one = _names(path)[-1] == "scale"
                drawn.append(jnp.full(leaf.shape, 1.0 if one else 0.0, leaf.dtype))
            else:
                drawn.append(std(float(d), hp) * jax.random.normal(k, leaf.shape, leaf.dtype))
        return jax.tree_util.tree_unflatten(tree, drawn)
    return Initializer(name, defaults, sample)


def fan_in_power(model: Model, gamma: float = 0.5) -> Initializer:
    """Every weight matrix and embedding W ~ N(0, (d_in^-gamma)^2), d_in its input
    dimension (`fan_in`); biases 0 and LayerNorm scales 1. gamma (hyperparameter
    "gamma", traced: a sweep over gamma is one program) is the initialization rate of
    Zhang, Lin, Wang, Zhang & Xu 2024 ("Initialization is critical to whether
    transformers fit composite functions by reasoning or memorizing"): the larger
    gamma, the smaller the initialization; gamma = 0.5 is LeCun's 1/sqrt(d_in). Any
    model: the pytree of `model.init` is redrawn leaf by leaf (flax's names: "kernel",
    "embedding", "bias", "scale"; an MLP's "w", "b")."""
    require(isinstance(gamma, (int, float)) and gamma > 0, "gamma", f"got {gamma!r}",
            "use an initialization rate gamma > 0 (std = d_in^-gamma; 0.5 is LeCun's)")
    return _redraw(model, "fan_in_power", {"gamma": float(gamma)}, lambda d, hp: jnp.power(d, -hp["gamma"]))


def constant_std(model: Model, std: float = 0.02) -> Initializer:
    """Every weight matrix and embedding W ~ N(0, init_std^2) whatever its width (the
    GPT-2 / "standard" LLM initialization, std 0.02); biases 0 and LayerNorm scales 1,
    as `fan_in_power`, which it complements: there std = d_in^-gamma shrinks with width,
    here it does not. Hyperparameter "init_std" (traced). Any model."""
    require(isinstance(std, (int, float)) and std > 0, "init_std", f"got {std!r}", "use a standard deviation > 0")
    return _redraw(model, "constant_std", {"init_std": float(std)}, lambda d, hp: hp["init_std"])
