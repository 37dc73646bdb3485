"""What the network represents: the input weights of units (condensation), attention
maps and answer kinds (transformers), the loss change of the next step, per-layer
norms, logit norms, Softmax Collapse, the NTK distance and the output spectrum. See
the package docstring (`engine.probes`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from engine.errors import require
from engine.models import layers
from engine.probes.base import Probe, Snapshot, _check_examples, norm, on_train, relative_change, scalar


def unit_weights(layer) -> jax.Array:
    """Rows (w_k, b_k): the input weights of each output unit k of one layer, bias last.
    MLP layers {"w": [fan_in, m], "b": [m]}; flax Dense/Conv {"kernel": [..., m], "bias": [m]}
    (a conv kernel is flattened over its window and input channels). [m, fan_in (+1)]."""
    w = layer["w"] if "w" in layer else layer["kernel"]
    rows = w.reshape(-1, w.shape[-1]).T
    b = layer.get("b", layer.get("bias"))
    return rows if b is None else jnp.concatenate([rows, b[:, None]], axis=1)


def _submodule(params, layer: str):
    """The parameters at `layer`: a name from `engine.models.layers`, or a "/"-separated
    path into a flax dict ("MultiHeadDotProductAttention_0/query"). An attention
    projection's kernel [d_model, heads, head_dim] and bias [heads, head_dim] come back
    as a dense layer [d_model, heads head_dim], one unit per (head, feature)."""
    first, *rest = layer.split("/")
    named = dict(layers(params))
    require(first in named, "probes.layer", f"no layer {first!r}", f"use one of {', '.join(named)}")
    node = named[first]
    for i, part in enumerate(rest):
        require(isinstance(node, dict) and part in node, "probes.layer", f"no {part!r} in {'/'.join([first, *rest[:i]])}",
                f"use one of {', '.join(node) if isinstance(node, dict) else '(none: a leaf)'}")
        node = node[part]
    if isinstance(node, dict) and "kernel" in node and node["kernel"].ndim == 3 and rest and rest[-1] in ("query", "key", "value"):
        node = {"kernel": node["kernel"].reshape(node["kernel"].shape[0], -1),
                **({"bias": node["bias"].reshape(-1)} if "bias" in node else {})}
    return node


def neuron_weights(layer: str = "0", name: str = "neuron_weights") -> Probe:
    """Each unit's input weights (w_k, b_k) in layer `layer` (a name from
    `engine.models.layers`, "0" = the first, or a path into a flax model's submodules,
    "MultiHeadDotProductAttention_0/query": the query projection's heads x head_dim
    units, each with its d_model input weights and bias): variable `name` with dims
    ("neuron", "fan_in"), or (f"{name}_neuron", f"{name}_fan_in") under another name, so
    several layers can be recorded at once. Their cosine similarities show condensation
    onto a few orientations (`engine.analysis`; the query/key and MLP input weights of a
    transformer, Zhang et al. 2024)."""
    require(isinstance(layer, str), "probes.layer", f"got {layer!r}", 'use a layer name such as "0"')
    require(isinstance(name, str) and name.isidentifier(), "probes.name", f"got {name!r}",
            "use a Python identifier such as 'kernels_1'")
    dims = ("neuron", "fan_in") if name == "neuron_weights" else (f"{name}_neuron", f"{name}_fan_in")

    def fn(snap):
        return unit_weights(_submodule(snap.params, layer))

    return scalar(name, fn, dims=dims)


# ----------------------------------------------------------------------------- transformers
def attention_maps(model, x_probe, average: bool = False, name: str = "attention") -> Probe:
    """The attention weights of every block on a fixed probe batch x_probe [m, seq_len]
    (`model.attention`, e.g. `engine.models.transformer`): variable `name` with dims
    ("probe", "block", "head", "query", "key"), or with average=True their mean over the
    probe batch, ("block", "head", "query", "key"); "block" (with its index as coordinate,
    so runs of several depths join, NaN past a run's depth) rather than "layer", which
    names parameter groups elsewhere. Causal rows sum to 1 over the keys
    at or before the query. The deterministic network (no dropout)."""
    require(getattr(model, "attention", None) is not None, "probes", f"attention_maps needs a model that returns "
            f"its attention weights, {getattr(model, 'name', model)!r} does not", "use engine.models.transformer")
    x_probe = jnp.asarray(x_probe)
    require(x_probe.ndim == 2 and x_probe.shape[0] >= 1, "probes.x_probe", f"has shape {x_probe.shape}",
            "give a batch of token sequences [m, seq_len]")
    shape = jax.eval_shape(lambda: model.attention(model.init(jax.random.key(0)), x_probe)).shape
    dims = ("block", "head", "query", "key")  # "block", not "layer": that dim names parameter groups
    coords = {d: list(range(n)) for d, n in zip(dims, shape[1:])}  # so sweeps over depth line up

    def fn(snap):
        a = model.attention(snap.params, x_probe)
        return a.mean(0) if average else a

    dims = dims if average else ("probe", *dims)
    return Probe(name, lambda snap, state: ({name: fn(snap)}, state), {name: dims}, coords=coords)


def answer_kinds(x, candidates: dict, name: str = "answers") -> Probe:
    """Of the examples x [m, ...], the fraction whose predicted class (argmax of the
    network's output) equals each candidate answer, and of those equal to none:
    candidates {kind: [m] class ids}, variable `name` with dims (f"{name}_kind",), one
    entry per kind in order, then "other". With two candidates that never coincide (the
    anchor task's held-out pair, `held_out_answers`) the fractions sum to 1."""
    require(isinstance(candidates, dict) and len(candidates) >= 1, "probes.candidates", f"got {candidates!r}",
            "give {kind: [m] class ids}")
    x = jnp.asarray(x)
    kinds = list(candidates)
    ids = jnp.stack([jnp.asarray(candidates[k]).astype(jnp.int32) for k in kinds])  # [kinds, m]
    require(ids.shape[1] == x.shape[0], "probes.candidates", f"hold {ids.shape[1]} answers for {x.shape[0]} examples",
            "give one answer per example")

    def fn(snap):
        predicted = jnp.argmax(snap.predict(snap.params, x), -1)
        hit = predicted[None] == ids
        return jnp.concatenate([hit.mean(1), jnp.mean(~hit.any(0))[None]]).astype(jnp.result_type(float))

    dim = f"{name}_kind"
    return Probe(name, lambda snap, state: ({name: fn(snap)}, state), {name: (dim,)}, coords={dim: [*kinds, "other"]})


def held_out_answers(table, name: str = "held_out_answers") -> Probe:
    """The anchor task's held-out sequences (`engine.anchors.composite_table`, those
    with `~table.train`): the fractions answered inferentially (key + shift_a1 +
    shift_a2), symmetrically (the label of the mirrored pair) and otherwise, as
    `engine.anchors.answer_kinds` counts them, measured inside the run."""
    test = ~table.train
    return answer_kinds(table.tokens[test].astype(float), {"inferential": table.inferential[test],
                                                            "symmetric": table.symmetric[test]}, name)


def loss_change(snap: Snapshot) -> jax.Array:
    """The change of the training loss over the step the run is about to take: the
    optimizer's update u from the current state, L(theta + u) - L(theta). Full batch."""
    updates, _ = snap.update(jax.grad(snap.loss_fn)(snap.params), snap.opt_state, snap.params)
    return snap.loss_fn(optax.apply_updates(snap.params, updates)) - snap.loss_fn(snap.params)


def _per_layer(params, params0) -> jax.Array:
    return jnp.stack([relative_change(p, p0) for (_, p), (_, p0) in zip(layers(params), layers(params0))])


# ----------------------------------------------------------------------------- representation
def layer_norms(params) -> jax.Array:
    """||theta_l|| of each layer (`engine.models.layers` order): [layer]."""
    return jnp.stack([norm(p) for _, p in layers(params)])


def logit_norm(snap: Snapshot) -> jax.Array:
    """The mean over training examples of ||f(x_i)||_2, the logits' size (Prieto et al.
    2025: it grows without bound on the way to Softmax Collapse)."""
    return on_train(snap, lambda f, y: jnp.mean(jnp.linalg.norm(f, axis=-1)))


def softmax_collapse(dtype: str = "float32") -> Probe:
    """The fraction of training examples whose softmax has collapsed: the correct-class
    probability is exactly 1 when the logits are rounded to `dtype` and the softmax is
    computed in it, so that example's cross-entropy gradient is exactly 0 (Softmax
    Collapse, Prieto et al. 2025). Classification targets."""
    require(dtype in ("float16", "bfloat16", "float32", "float64"), "probes.dtype", f"got {dtype!r}",
            "use float16, bfloat16, float32 or float64")

    def collapsed(logits, y):
        p = jax.nn.softmax(logits.astype(dtype), axis=-1)
        correct = jnp.take_along_axis(p, jnp.argmax(y, -1)[:, None], -1)[:, 0]
        return jnp.mean((correct == 1).astype(jnp.float32))

    return scalar("softmax_collapse", lambda snap: on_train(snap, collapsed), needs={"classification"})


def ntk_gram(predict, params, x, direction) -> jax.Array:
    """K_ij = <grad_theta u.f(x_i), grad_theta u.f(x_j)>: the empirical NTK of the
    outputs projected on `direction` u [outputs] (for one output, u = 1: the NTK
    itself), on the examples x [m, ...]. [m, m]."""
    row = lambda xi: ravel_pytree(jax.grad(lambda p: predict(p, xi[None])[0] @ direction)(params))[0]
    J = jax.vmap(row)(x)
    return J @ J.T


def ntk_distance(examples: int = 32) -> Probe:
    """The kernel distance of the empirical NTK from its value at initialization,
    d(K_t, K_0) = 1 - <K_t, K_0>_F / (||K_t||_F ||K_0||_F) (Fort et al. 2020; the
    measure of laziness in Kumar et al. 2023): 0 while training is lazy. K on the first
    `examples` training inputs; for several outputs, the NTK of their projection on one
    fixed random unit direction (drawn from a fixed key, the same at every step and in
    every run), which costs `examples` gradients instead of `examples` x outputs.
    State: theta_0."""
    _check_examples(examples)

    def measure(snap, params0):
        x = snap.data.x[:examples]
        outputs = snap.data.y.shape[-1]
        u = jax.random.normal(jax.random.key(0), (outputs,))
        u = u / jnp.linalg.norm(u)
        K, K0 = (ntk_gram(snap.predict, p, x, u) for p in (snap.params, params0))
        return {"ntk_distance": 1 - jnp.sum(K * K0) / (jnp.linalg.norm(K) * jnp.linalg.norm(K0))}, params0

    return Probe("ntk_distance", measure, {"ntk_distance": ()}, init=lambda params: params)


def output_spectrum(grid_x, grid_shape: tuple, name: str = "output_power") -> Probe:
    """The power per frequency of the network's outputs over an input grid: f on the
    inputs grid_x [prod(grid_shape), ...] (e.g. every pair (a, b) of Z_p^2 in order,
    grid_shape (p, p)), reshaped to [*grid_shape, outputs], its discrete Fourier
    transform over the grid axes, |F(k)|^2 summed over outputs: dims
    (f"{name}_k0", f"{name}_k1", ...). For modular arithmetic, a network that has learnt
    (a + b) mod p puts its power on a few frequencies (Nanda et al. 2023; Zhou, Zhang &
    Xu 2024 read grokking as the fitting of frequencies)."""
    grid_shape = tuple(int(g) for g in grid_shape)
    require(len(grid_x) == int(jnp.prod(jnp.array(grid_shape))), "probes.grid_x",
            f"has {len(grid_x)} inputs, grid_shape {grid_shape} needs {int(jnp.prod(jnp.array(grid_shape)))}",
            "give every grid point once, in row-major order")
    grid_x = jnp.asarray(grid_x)
    axes = tuple(range(len(grid_shape)))

    def fn(snap):
        f = snap.predict(snap.params, grid_x).reshape(*grid_shape, -1)
        return jnp.sum(jnp.abs(jnp.fft.fftn(f, axes=axes)) ** 2, axis=-1) / f.size

    return scalar(name, fn, dims=tuple(f"{name}_k{i}" for i in axes))


def grid_spectrum_norm(g, mask=1.0, xp=jnp):
    """||F_S[g](k)||: the discrete Fourier transform over the grid axes of g [*grid,
    classes] masked to S (`mask`, broadcast against g: 1 on S, 0 off it), its norm over
    classes: [*grid]. `xp` = numpy computes it on the host (e.g. for targets)."""
    axes = tuple(range(g.ndim - 1))
    return xp.sqrt(xp.sum(xp.abs(xp.fft.fftn(g * mask, axes=axes)) ** 2, axis=-1))


def residual_spectrum(grid_x, targets, train_mask, grid_shape: tuple, dims=None, name: str = "frequency_fit") -> Probe:
    """How the fit of a classifier is spread over the frequencies of its input grid
    (Zhou, Zhang & Xu 2024: grokking of modular arithmetic read in frequency space).
    On every grid point (grid_x [prod(grid_shape), ...], e.g. every pair (a, b) of Z_p^2
    in row-major order, grid_shape (p, p)) H = softmax of the network's outputs and Y =
    targets [prod(grid_shape), classes] (one-hot), reshaped to [*grid_shape, classes];
    S = the training points (train_mask [prod(grid_shape)], 1 or True on them). Records
    train_residual ||F_S[H - Y](k)||, test_residual ||F_{not S}[H - Y](k)|| and
    output_power ||F[H](k)||^2 (`grid_spectrum_norm`), each with dims `dims` (default
    f"{name}_k0", f"{name}_k1", ...; coordinates 0 .. n - 1)."""
    grid_shape = tuple(int(g) for g in grid_shape)
    size = int(jnp.prod(jnp.array(grid_shape)))
    for field, v in (("grid_x", grid_x), ("targets", targets), ("train_mask", train_mask)):
        require(len(v) == size, f"probes.{field}", f"has {len(v)} rows, grid_shape {grid_shape} needs {size}",
                "give every grid point once, in row-major order")
    dims = tuple(dims) if dims is not None else tuple(f"{name}_k{i}" for i in range(len(grid_shape)))
    require(len(dims) == len(grid_shape), "probes.dims", f"got {dims} for a grid of {len(grid_shape)} axes",
            "name one dimension per grid axis")
    x = jnp.asarray(grid_x)
    y = jnp.asarray(targets, jnp.float32).reshape(*grid_shape, -1)
    mask = jnp.asarray(train_mask, jnp.float32).reshape(*grid_shape, 1)

    def measure(snap, state):
        h = jax.nn.softmax(snap.predict(snap.params, x), axis=-1).reshape(y.shape)
        return {"train_residual": grid_spectrum_norm(h - y, mask), "test_residual": grid_spectrum_norm(h - y, 1 - mask),
                "output_power": grid_spectrum_norm(h) ** 2}, state

    names = ("train_residual", "test_residual", "output_power")
    return Probe(name, measure, {n: dims for n in names}, coords={d: list(range(g)) for d, g in zip(dims, grid_shape)})
