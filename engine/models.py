"""Pure models: `Model(init, apply)` pairs.

`init(key) -> params` draws parameters at the model's default scale;
`apply(params, x) -> y` maps a batch `x: [n, d_in]` (images: `[n, h, w, c]`) to
`y: [n, d_out]`. Initialization scale as traced data lives in `engine.init`, which
re-draws the same pytree with per-layer scales.

MLP parameters are a tuple of layers, each `{"w": [fan_in, fan_out], "b": [fan_out]}`
(no "b" without bias). Parameterizations (Jacot et al. 2018; Mei et al. 2018):

- "standard":   h_{l+1} = phi(h_l W_l + b_l),                      W ~ N(0, 1/fan_in)
- "ntk":        h_{l+1} = phi(h_l W_l / sqrt(fan_in) + b_l),       W ~ N(0, 1)
- "mean_field": as "ntk", but the output layer is multiplied by 1/fan_in.

Any model whose `init`/`apply` follow this contract works with the engine, e.g. a flax
linen module wrapped by `from_flax` (the CNN of `cnn`).

Dropout: `mlp`, `cnn` and `transformer` also have `train_apply(params, x, key, rate)`,
the stochastic forward pass of a training step: inverted dropout (Srivastava et al.
2014) of rate `rate` (a traced scalar) on every hidden activation (MLP, CNN) or on the
attention and MLP outputs of each block (transformer, as in GPT-2), masks drawn from
`key`. Kept units are scaled by 1/(1 - rate), so `apply`, the network without
dropout, is the mean over masks of a one-hidden-layer MLP's output, and the usual
weight-scaling approximation of that mean for deeper ones; at rate 0 `train_apply`
equals `apply` bit for bit.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from engine.errors import ConfigError, choose, require


class Model(NamedTuple):
    """A pure model. `layer_shapes` ((fan_in, fan_out) per dense layer) and
    `multipliers` (the static factor each layer's pre-activation is multiplied by)
    and `bias` (whether each layer has one) are set for MLPs, whose initialization
    `engine.init` can rescale per layer. `train_apply(params, x, key, rate)` is the
    forward pass with dropout (None: the model has none). `attention(params, x)` ->
    [n, layer, head, query, key]: the attention weights of every layer (transformers;
    None for other models)."""
    init: Callable[[jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    name: str = "model"
    layer_shapes: tuple | None = None
    multipliers: tuple | None = None
    bias: tuple | None = None
    out_dim: int | None = None
    train_apply: Callable | None = None
    attention: Callable | None = None


def _xtanh(x):
    return x * jnp.tanh(x)


def _x2tanh(x):
    return x * x * jnp.tanh(x)


ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
    "quadratic": jnp.square,  # Kumar et al. 2023's lazy-to-rich grokking networks
    # The multiplicity family of Zhou et al. 2021 / Chen et al. 2023: multiplicity p
    # means phi^(s)(0) = 0 for s < p; tanh has p = 1, x*tanh p = 2, x^2*tanh p = 3.
    "xtanh": _xtanh,
    "x2tanh": _x2tanh,
}

PARAMETERIZATIONS = ("standard", "ntk", "mean_field")


def activation_function(name: str) -> Callable:
    """The activation function called `name` (one of `ACTIVATIONS`)."""
    return choose(name, ACTIVATIONS, "activation")


def dropout(h, rate, key):
    """Inverted dropout: each entry of h kept with probability 1 - rate and scaled by
    1 / (1 - rate), else zero, so E[dropout(h)] = h. rate: traced scalar in [0, 1); at
    rate 0 every entry is kept and multiplied by 1.0, i.e. h bit for bit. The scale is
    one scalar division, then a product: an elementwise division was compiled
    differently (and rounded differently) with the number of devices, so a run on 8
    simulated devices drifted from the same run on one."""
    keep = jax.random.uniform(key, h.shape, h.dtype) >= rate
    scale = (1.0 / (1.0 - jnp.asarray(rate))).astype(h.dtype)
    return jnp.where(keep, h * scale, jnp.zeros((), h.dtype))


@jax.custom_jvp
def softmax(x):
    """softmax over the last axis, y = e * (1 / sum e) with e = exp(x - max x), and
    its derivative written out, dy = y * (dx - <y, dx>) (`jax.nn.softmax` with
    `jax_softmax_custom_jvp`). Differentiating through y = e / sum e instead leaves a
    division by a broadcast sum in the backward pass, which XLA rewrote as a product
    with the reciprocal in one compiled program and not in another: a transformer run
    on 8 simulated devices drifted from the same run on one. Written with the
    reciprocal and no division by a broadcast, there is nothing left to rewrite."""
    e = jnp.exp(x - jax.lax.stop_gradient(x.max(-1, keepdims=True)))
    return e * (1.0 / e.sum(-1, keepdims=True))


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = softmax(x)
    return y, y * (dx - (y * dx).sum(-1, keepdims=True))


def dot_product_attention(query, key, value, mask=None, module=None):
    """softmax(q k^T / sqrt(d) + mask) v for q, k, v: [..., length, heads, d] ->
    [..., q_length, heads, d]: flax's `nn.dot_product_attention` (no dropout on the
    weights) with `softmax` above, as the `attention_fn` of `nn.MultiHeadDotProductAttention`.
    The weights [..., heads, q_length, k_length] are sown as flax's are
    ("intermediates/attention_weights") when the module asks for them."""
    depth = query.shape[-1]
    logits = jnp.einsum("...qhd,...khd->...hqk", query / jnp.sqrt(depth).astype(query.dtype), key)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = softmax(logits)
    if module is not None:
        module.sow("intermediates", "attention_weights", weights)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value)


def dense(h, w):
    """h @ w for h: [n, fan_in], w: [fan_in, fan_out]. A contraction of length one (a
    1-D input) is written as the outer product it is: exact, and under `jax.vmap` over
    runs one fused elementwise loop instead of a batch of degenerate matrix products."""
    if w.shape[0] == 1:
        return h * w[0]
    return h @ w


def _layer_multipliers(layer_shapes, parameterization):
    n = len(layer_shapes)
    if parameterization == "standard":
        return (1.0,) * n
    fan_ins = [fan_in for fan_in, _ in layer_shapes]
    mults = [1.0 / math.sqrt(f) for f in fan_ins]
    if parameterization == "mean_field":
        mults[-1] = 1.0 / fan_ins[-1]
    return tuple(mults)


def mlp(widths, activation: str = "relu", bias: bool = True,
        parameterization: str = "standard", output_bias: bool | None = None) -> Model:
    """A fully connected network with layer widths `widths = (d_in, h_1, ..., d_out)`.

    x: [n, d_in] -> y: [n, d_out]; the activation is applied after every layer but
    the last. Default init: W ~ N(0, 1/fan_in) for "standard", N(0, 1) otherwise;
    biases zero. `output_bias` (default: `bias`) drops the last layer's bias, as in
    f(x) = sum_k a_k phi(w_k . x + b_k) (Luo et al. 2021).
    """
    output_bias = bias if output_bias is None else output_bias
    widths = tuple(widths) if not isinstance(widths, int) else (widths,)
    require(len(widths) >= 2, "widths", f"got {widths!r}, which has fewer than 2 entries",
            "give (d_in, hidden..., d_out), e.g. (1, 100, 1)")
    for i, w in enumerate(widths):
        require(isinstance(w, int) and not isinstance(w, bool) and w >= 1, f"widths[{i}]",
                f"got {w!r}; every width must be an integer >= 1", "use a positive integer")
    phi = activation_function(activation)
    require(parameterization in PARAMETERIZATIONS, "parameterization",
            f"unknown value {parameterization!r}", f"use one of {', '.join(PARAMETERIZATIONS)}")
    shapes = tuple(zip(widths[:-1], widths[1:]))
    has_bias = (bias,) * (len(shapes) - 1) + (output_bias,)
    mults = _layer_multipliers(shapes, parameterization)

    def init(key):
        keys = jax.random.split(key, len(shapes))
        layers = []
        for k, (fan_in, fan_out) in zip(keys, shapes):
            std = 1.0 / math.sqrt(fan_in) if parameterization == "standard" else 1.0
            layer = {"w": std * jax.random.normal(k, (fan_in, fan_out))}
            if has_bias[len(layers)]:
                layer["b"] = jnp.zeros((fan_out,))
            layers.append(layer)
        return tuple(layers)

    def train_apply(params, x, key=None, rate=0.0):
        h = x
        for i, (layer, m) in enumerate(zip(params, mults)):
            h = dense(h, layer["w"])
            if m != 1.0:
                h = m * h
            if "b" in layer:
                h = h + layer["b"]
            if i < len(params) - 1:
                h = phi(h)
                if key is not None:
                    h = dropout(h, rate, jax.random.fold_in(key, i))
        return h

    def apply(params, x):
        return train_apply(params, x)

    name = f"mlp{'-'.join(map(str, widths))}-{activation}"
    return Model(init, apply, name, shapes, mults, has_bias, widths[-1], train_apply)


def from_flax(module, example_input, name: str | None = None, out_dim: int | None = None,
              dropout: bool = False) -> Model:
    """Wrap a flax linen module as a `Model`; `example_input: [n, ...]` fixes shapes.
    dropout: the module's `__call__(x, key=None, rate=0.0)` applies dropout (with
    `engine.models.dropout`) when given a key, so the model gets a `train_apply`."""
    def init(key):
        return module.init(key, example_input)["params"]

    def apply(params, x):
        return module.apply({"params": params}, x)

    def train_apply(params, x, key, rate):
        return module.apply({"params": params}, x, key, rate)

    return Model(init, apply, name or type(module).__name__, out_dim=out_dim,
                 train_apply=train_apply if dropout else None)


def cnn(input_shape, channels=(16, 16), out_dim: int = 10, activation: str = "relu",
        kernel: int = 3) -> Model:
    """A small convolutional network (flax linen): conv layers with `channels`,
    global average pooling, a dense readout. x: [n, h, w, c] -> y: [n, out_dim]."""
    import flax.linen as nn

    require(len(input_shape) == 3, "input_shape", f"got {input_shape!r}",
            "give (height, width, channels)")
    phi = activation_function(activation)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, key=None, rate=0.0):
            for i, c in enumerate(channels):
                x = phi(nn.Conv(c, (kernel, kernel))(x))
                if key is not None:
                    x = dropout(x, rate, jax.random.fold_in(key, i))
            return nn.Dense(out_dim)(x.mean(axis=(1, 2)))

    return from_flax(CNN(), jnp.zeros((1, *input_shape)), "cnn", out_dim, dropout=True)


def transformer(vocab: int, seq_len: int, out_dim: int | None = None, d_model: int = 64,
                heads: int = 4, depth: int = 1, mlp_ratio: int = 4, layer_norm: bool = True,
                activation: str = "gelu", readout: str = "last") -> Model:
    """A small decoder-style transformer (flax linen) for token tasks such as modular
    arithmetic: x: [n, seq_len] token ids (stored as floats by `engine.data`; cast
    here) -> logits of the last position [n, out_dim or vocab] (readout "last"), or of
    every position [n, seq_len, out_dim or vocab] (readout "all", for next-token
    cross-entropy, `engine.losses.next_token_cross_entropy`). Pre-LayerNorm blocks
    of causal self-attention and an MLP of width mlp_ratio * d_model, learned position
    embeddings; `layer_norm=False` drops every LayerNorm. `layer_norm=False,
    activation="relu"` is Nanda et al. 2023's grokking transformer (with d_model 128,
    heads 4, mlp_ratio 4). The model's `attention(params, x)` returns the softmax
    attention weights of every block, [n, depth, heads, seq_len (query), seq_len (key)],
    zero above the diagonal (causal), each row summing to 1 (flax's `sow_weights`)."""
    import flax.linen as nn

    act = activation_function(activation)
    norm = (lambda h: nn.LayerNorm()(h)) if layer_norm else (lambda h: h)

    for field, v in (("vocab", vocab), ("seq_len", seq_len), ("d_model", d_model), ("heads", heads),
                     ("depth", depth)):
        require(isinstance(v, int) and v >= 1, field, f"got {v!r}", "use an integer >= 1")
    require(d_model % heads == 0, "heads", f"d_model={d_model} is not divisible by heads={heads}",
            "choose heads dividing d_model")
    require(readout in ("last", "all"), "readout", f"got {readout!r}",
            "use 'last' (logits of the last position) or 'all' (every position, next-token prediction)")
    out_dim = out_dim or vocab

    class Transformer(nn.Module):
        @nn.compact
        def __call__(self, x, key=None, rate=0.0, sow=False):
            drop = (lambda z, i: z) if key is None else (lambda z, i: dropout(z, rate, jax.random.fold_in(key, i)))
            tokens = x.astype(jnp.int32)
            h = nn.Embed(vocab, d_model)(tokens)
            h = h + self.param("position", nn.initializers.normal(0.02), (seq_len, d_model))
            mask = nn.make_causal_mask(tokens)
            for i in range(depth):
                h = h + drop(nn.MultiHeadDotProductAttention(heads, attention_fn=dot_product_attention)(
                    norm(h), mask=mask, sow_weights=sow), 2 * i)
                z = nn.Dense(mlp_ratio * d_model)(norm(h))
                h = h + drop(nn.Dense(d_model)(act(z)), 2 * i + 1)
            return nn.Dense(out_dim)(norm(h[:, -1] if readout == "last" else h))

    module = Transformer()

    def attention(params, x):
        _, state = module.apply({"params": params}, x, None, 0.0, True, mutable=["intermediates"])
        blocks = state["intermediates"]
        return jnp.stack([blocks[f"MultiHeadDotProductAttention_{i}"]["attention_weights"][0]
                          for i in range(depth)], axis=1)

    model = from_flax(module, jnp.zeros((1, seq_len)), "transformer", out_dim, dropout=True)
    return model._replace(attention=attention)


def layers(params) -> tuple[tuple[str, Any], ...]:
    """The named layers of a parameter pytree: an MLP's tuple entries ("0", "1", ...)
    or a flax dict's top-level submodules, in a fixed order."""
    if isinstance(params, (tuple, list)):
        return tuple((str(i), p) for i, p in enumerate(params))
    if isinstance(params, dict):
        return tuple((str(k), params[k]) for k in sorted(params))
    raise ConfigError("params", f"cannot split a {type(params).__name__} into layers",
                      "use a tuple of layers or a dict of submodules")


def scalar() -> Model:
    """One parameter x ({"x": [1]}) whose output is x itself for every input: with a
    loss of the prediction, a loss of the parameter, e.g. L(x) = x^k / k (Bai et al.
    2026) or x^2 / 2. Output [n, 1]."""
    return Model(init=lambda key: {"x": jnp.ones((1,))},
                 apply=lambda p, inputs: jnp.broadcast_to(p["x"], (inputs.shape[0], 1)), name="scalar", out_dim=1)
