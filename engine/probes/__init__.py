"""What is measured along a run, every `every` steps, inside the compiled loop.

The package: `base` (the Snapshot and Probe contract, wrappers), `hessian` (curvature
probes), `representation` (what the network represents); here, the registry of
built-in names (`probe`, `BUILTIN`), `chain` and `every`.

A `Probe` is a pair of pure functions, as an optax transformation is:
`init(params) -> state` (or None: stateless) and
`measure(snapshot, state) -> ({variable: value}, state)`, where `state` is what the
probe carries from one measurement to the next (the previous top eigenvectors that
warm-start the next eigen-solve, theta_0 for the relative change). `outputs` names
each variable's trailing dimensions, such as ("layer",) or ("eigen",). Values are
fixed-size arrays, so a whole trajectory is one array.

`chain(*probes)` combines probes into one whose state is {probe name: its state}, as
`optax.named_chain` does; a simulation measures the chain of its `probes=`. A probe
that *sets* an optimizer hyperparameter (`sets`, e.g. `step_size` sets "lr") records
the value under that name, and the run trains with it from that record step until the
next; a chain measures such probes first and hands the others a snapshot whose
optimizer state already holds the new value, so no probe's meaning depends on its
position in the chain.

Every probe measures the full training set, also under minibatch SGD (`loss_fn`).
Built-in probes (names shared by every experiment; `probe(name)` or a factory below):
    loss, test_loss            training / test loss
    accuracy, test_accuracy    argmax accuracy (classification targets)
    param_norm                 ||theta_t||
    grad_norm                  ||grad L(theta_t)||
    prediction                 f(x_i; theta_t) on the training inputs, dims ("example", "output")
    loss_change                L(theta_t + u_t) - L(theta_t), u_t the optimizer's next update
                               (> 0: the next step raises the loss; edge of stability)
    relative_change            ||theta_t - theta_0|| / ||theta_0||
    relative_change_layer      the same per layer, dims ("layer",)  (Luo et al. 2021:
                               RD(theta_w) of the input layer is layer "0")
    neuron_weights             each unit's input weights with its bias appended, [neuron, fan_in]
                               (`neuron_weights(layer)`; conv kernels flattened: one row per
                               channel), for condensation (Zhou et al. 2021, 2023)
    sharpness (+ eigen_residual, eigen_products)   lambda_max(H), top-k with dims ("eigen",)
    preconditioned_sharpness (+ preconditioned_eigen_residual, _products)   lambda_max(P^-1 H)
    directional_curvature                 g^T H g / g^T g, g the full gradient
    preconditioned_directional_curvature  (d^T H d)/(d^T P d), d = P^-1 g
    trace (+ trace_error)                 Hutchinson estimate of tr H
    hessian_frobenius (+ _error)          Hutchinson estimate of ||H||_F = sqrt(tr H^2)
    spectral_density (+ spectrum_nodes, spectrum_weights, spectrum_radius)
                                          eigenvalue density of H by deflated stochastic Lanczos
                                          quadrature (Lin, Saad & Yang 2016; Ghorbani et al. 2019)
    hessian_extremes                      lambda_max and lambda_min (signed) of H (+ _residual,
                                          _products of each)
    layer_sharpness (+ _residual, _products)    lambda_max of each layer's Hessian block, dims ("layer",)
  under minibatch training (batch size B; refused under full batch):
    batch_sharpness (+ _error)            E_B[g_B^T H_B g_B / ||g_B||^2]  (Andreyev & Beneventano 2024)
    minibatch_sharpness (+ _error, _residual, _products)   E_B[lambda_max(H_B)]
    gradient_noise (+ _error, non_uniformity, non_uniformity_residual, _products)
                                          tr Cov_B[g_B] = E_B ||g_B - g||^2, and
                                          s = sqrt(lambda_max((1/n) sum_i H_i^2 - H^2)) (Wu, Ma & E 2018)
    step_size (lr, hessian_norm)          sets the learning rate a run can afford,
                                          lr = fraction * 2 / ||H||_2
  what the network represents (grokking):
    weight_norm_layer                     ||theta_l|| per layer, dims ("layer",)
    logit_norm                            mean_i ||f(x_i)||
    softmax_collapse                      fraction of examples whose correct-class softmax is
                                          exactly 1 in float32 (Prieto et al. 2025)
    ntk_distance                          1 - <K_t, K_0>_F / (||K_t|| ||K_0||) (Fort et al. 2020)
    output_spectrum(grid_x, grid_shape)   |DFT over the input grid of f|^2 per frequency
    residual_spectrum(grid_x, targets, train_mask, grid_shape)
                                          ||F_S[softmax f - Y](k)|| on the training / test points
                                          of the grid, and ||F[softmax f](k)||^2 (Zhou, Zhang & Xu 2024)
  transformers (Zhang et al. 2024, anchor functions):
    attention_maps(model, x_probe)        attention weights on a fixed probe batch, dims
                                          ("probe", "block", "head", "query", "key"), or
                                          averaged over it (average=True)
    answer_kinds(x, candidates)           fractions of x answered with each candidate answer
                                          (or none of them), dims ("answer",); held_out_answers(table)
                                          for the anchor task's inferential / symmetric split
    neuron_weights("Module_0/query")      also a flax submodule's path: an attention projection's
                                          output units (heads x head_dim) with their d_model inputs

Every Lanczos solve spends its budget (`iters` cold, `warm_iters` warm-started), then
goes on until its residuals are below `tol` (default TOL = 1e-3), at most `max_iters`
/ `max_warm_iters` products (default CAP x the budget); its residuals and products are
recorded with it.
"""
from __future__ import annotations

import difflib

import jax

from engine import losses, optim
from engine.errors import ConfigError, require
from engine.probes.base import (NEEDS, MATMUL_PRECISIONS, Probe, Snapshot, _key, _measured, from_start, norm, on_test,
                                on_train, relative_change, scalar, with_dropout_mask, with_precision)
from engine.probes.hessian import (CAP, TOL, Budget, batch_sharpness, directional_curvature, gradient_noise,
                                   hessian_extremes, hessian_frobenius, layer_sharpness, minibatch_sharpness,
                                   minibatches, preconditioned_sharpness, sharpness, spectral_density, step_size,
                                   trace)
from engine.probes.representation import (_per_layer, answer_kinds, attention_maps, grid_spectrum_norm,
                                          held_out_answers, layer_norms, logit_norm, loss_change, neuron_weights,
                                          ntk_distance, ntk_gram, output_spectrum, residual_spectrum,
                                          softmax_collapse, unit_weights)


def every(steps: int, what) -> Probe:
    """`what` (a probe's name or a `Probe`) measured every `steps` steps instead of at every
    record, e.g. `every(50, "sharpness")` beside the loss at every=10: papers probe
    curvature less often than the loss (`eig_freq` in Cohen et al.'s code). `steps` must
    be a whole multiple of the simulation's `every`; between its measurements the
    probe's variables are NaN (`ds.sharpness.dropna("step")` keeps its own steps) and
    its state (warm starts) carries over from its last measurement. It is measured at
    step 0 and at every record whose step is a multiple of `steps`; the skipped records
    cost nothing (a `lax.cond` on the record index, which all runs share)."""
    given = what if isinstance(what, Probe) else probe(what)
    require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "probes.every",
            f"got {steps!r}", "use a whole number of steps >= 1, a multiple of the simulation's every")
    require(not given.members, "probes.every", "got a chain", "give each probe its own cadence")
    require(not given.sets, "probes.every", f"probe {given.name!r} sets {', '.join(given.sets)}, which the run "
            "trains with until the next measurement", "measure it at every record")
    return given._replace(every=steps)


BUILTIN = {
    "loss": lambda: scalar("loss", lambda s: on_train(s, s.loss)),
    "test_loss": lambda: scalar("test_loss", lambda s: on_test(s, s.loss),
                                needs={"test"}),
    "accuracy": lambda: scalar("accuracy", lambda s: on_train(s, losses.accuracy),
                               needs={"classification"}),
    "test_accuracy": lambda: scalar(
        "test_accuracy", lambda s: on_test(s, losses.accuracy),
        needs={"classification", "test"}),
    "param_norm": lambda: scalar("param_norm", lambda s: norm(s.params)),
    "loss_change": lambda: scalar("loss_change", loss_change),
    "prediction": lambda: scalar("prediction", lambda s: s.predict(s.params, s.data.x), dims=("example", "output")),
    "grad_norm": lambda: scalar("grad_norm", lambda s: norm(jax.grad(s.loss_fn)(s.params))),
    "relative_change": lambda: from_start("relative_change", relative_change),
    "relative_change_layer": lambda: from_start("relative_change_layer", _per_layer, dims=("layer",)),
    "sharpness": sharpness,
    "preconditioned_sharpness": preconditioned_sharpness,
    "directional_curvature": directional_curvature,
    "preconditioned_directional_curvature": lambda: directional_curvature(preconditioned=True),
    "trace": trace,
    "hessian_frobenius": hessian_frobenius,
    "spectral_density": spectral_density,
    "hessian_extremes": hessian_extremes,
    "batch_sharpness": batch_sharpness,
    "minibatch_sharpness": minibatch_sharpness,
    "gradient_noise": gradient_noise,
    "layer_sharpness": layer_sharpness,
    "step_size": step_size,
    "neuron_weights": neuron_weights,
    "weight_norm_layer": lambda: scalar("weight_norm_layer", lambda s: layer_norms(s.params), dims=("layer",)),
    "logit_norm": lambda: scalar("logit_norm", logit_norm),
    "softmax_collapse": softmax_collapse,
    "ntk_distance": ntk_distance,
}


def probe(name: str) -> Probe:
    """The built-in probe called `name`, with default settings."""
    if not isinstance(name, str) or name not in BUILTIN:
        close = difflib.get_close_matches(str(name), BUILTIN, n=3)
        raise ConfigError("probes", f"unknown probe {name!r}", (f"did you mean {' or '.join(map(repr, close))}? " if close
                          else "") + "The built-in names are engine.probes.BUILTIN; or pass an engine.probes.Probe")
    return BUILTIN[name]()


def chain(*probes) -> Probe:
    """One probe that measures all of `probes` (names or `Probe`s; chains are
    flattened). Its state is {name: that probe's state}; its variables are all of
    theirs. Probes that set hyperparameters (`sets`) are measured first, and the others
    see a snapshot whose optimizer state holds the values they set. ConfigError for an
    unknown name, a name or variable used twice, or a hyperparameter set twice."""
    require(len(probes) >= 1, "probes", "no probes given", "give a list of probe names, e.g. ('loss', 'sharpness')")
    given = [p if isinstance(p, Probe) else probe(p) for p in probes]
    members = tuple(m for p in given for m in (p.members or (p,)))
    for what, names in (("probe", [m.name for m in members]), ("variable", [v for m in members for v in m.outputs]),
                        ("set hyperparameter", [h for m in members for h in m.sets])):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError("probes", f"{what} {dup[0]!r} appears twice", "list each probe once")
    setters, observers = [m for m in members if m.sets], [m for m in members if not m.sets]

    def init(params):
        return {m.name: m.init(params) if m.init is not None else None for m in members}

    def measure(snap: Snapshot, state: dict):
        values, state = {}, dict(state)
        for m in setters:
            v, state[m.name] = m.measure(snap, state[m.name])
            values.update(v)
        if setters:
            snap = snap._replace(opt_state=optim.with_hyperparams(
                snap.opt_state, **{h: values[h] for m in setters for h in m.sets}))
        for m in observers:
            v, state[m.name] = _measured(m, snap, state[m.name])
            values.update(v)
        return values, state

    return Probe("chain", measure, {v: d for m in members for v, d in m.outputs.items()}, init,
                 coords={d: c for m in members for d, c in m.coords.items()},
                 sets=tuple(h for m in setters for h in m.sets), members=members)


def chain_of(probes) -> Probe:
    """The chain of a `simulation(probes=...)` argument: a list or tuple of names and
    `Probe`s, or one `Probe`."""
    if isinstance(probes, Probe):
        return chain(probes)
    require(isinstance(probes, (list, tuple)) and len(probes) >= 1, "probes", f"got {probes!r}",
            "give a list of probe names, e.g. ('loss', 'sharpness')")
    return chain(*probes)


__all__ = ["BUILTIN", "CAP", "MATMUL_PRECISIONS", "NEEDS", "TOL", "Budget", "Probe", "Snapshot", "answer_kinds",
           "attention_maps", "batch_sharpness", "chain", "chain_of", "directional_curvature", "every", "from_start",
           "gradient_noise", "grid_spectrum_norm", "held_out_answers", "hessian_extremes", "hessian_frobenius", "layer_norms",
           "layer_sharpness", "logit_norm", "loss_change", "minibatch_sharpness", "minibatches", "neuron_weights",
           "norm", "ntk_distance", "ntk_gram", "on_test", "on_train", "output_spectrum", "preconditioned_sharpness",
           "probe", "relative_change", "residual_spectrum", "scalar", "sharpness", "softmax_collapse", "spectral_density", "step_size",
           "trace", "unit_weights", "with_dropout_mask", "with_precision", "_key"]
