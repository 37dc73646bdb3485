"""Grokking as the transition from lazy to rich training: the output scale alpha sets
how long a network stays on its initial kernel, so the test loss follows the training
loss only after a delay that grows with alpha.

Kumar, Bordelon, Gershman & Pehlevan 2024 (ICLR), "Grokking as the transition from lazy
to rich training dynamics" (arXiv 2310.06110); the model and scalings follow the
authors' supplementary notebook. Full-batch GD on the centred model
f_alpha(x) = alpha (f(x; theta) - f(x; theta_0)) with MSE, over a traced grid of alpha
(one program, `simulate.simulation(output_scale=...)`).

Tasks (`task`):
- "polynomial" (their Section 5, Figs. 1 and 3a): x ~ N(0, I_D), y = (beta . x)^2 / 2,
  beta a unit vector uniform on the sphere (`data.quadratic_index`), D = 100, P = 550
  training and 1000 test points. Their x ~ N(0, I/D) and beta ~ N(0, I_D) give the same
  task up to |beta| / sqrt(D) = 1 +- 0.07 (they do not normalize beta; we do). The network
  has no readout weights: f(x) = (1/N) sum_i phi(w_i . x / sqrt(D)), phi(h) = h + eps h^2 / 2,
  w_i ~ N(0, I_D) (a model of this module; `engine.models.mlp` has no eps-activation and
  always trains readouts). eps sets how well the initial NTK, dominated by the linear
  part of phi, is aligned with the quadratic target (they use 0.02 in Fig. 1, 0.25 in
  Fig. 3a); we use 0.25, where the lazy phase interpolates the training set.
- "modular" (their Fig. 2): (a + b) mod p on one-hot pairs (`data.modular`), p = 23, 90%
  of the pairs for training, one-hot targets, the two-layer quadratic network
  f(x) = W_2 (W_1 x)^2 / (D N) with W ~ N(0, 1) and no biases: `models.mlp((2p, N, p),
  "quadratic", bias=False, parameterization="mean_field")` is exactly this.

Mapping of their parametrization onto ours. N is the hidden width. They descend
mean((f_alpha - y)^2) (the centred model in Fig. 1; their f already carries alpha) with
eta = c N / alpha^2 (c = 1 in Fig. 1, 0.5 in 3a, 20 in 3e). Our `mse` is
0.5 mean_n sum_outputs and with `scale_loss` the objective is L(f_alpha) / alpha^2, so our
constant lr = 2 c N is their eta = c N / alpha^2; we take c = 4 (lr 2 c N), inside GD's
stable range (the linear part of the NTK needs c < ~40). For the modular task they
write f = s^2 g (s twice in their forward pass), divide the torch MSE (mean over n p
entries) by s^2 and step with 100 / s^2, i.e. eta = 100 / alpha^2 on the MSE with
alpha = s^2; ours is lr = 200 / p (their s = 0.5, 1, 1.5, 2: alpha = 0.25, 1, 2.25, 4).
Their modular network is not centred, but f(x; theta_0) ~ 1e-2 alpha there, so the
centring changes little. Recorded `loss` / `test_loss` are our 0.5 mean squared errors
of f_alpha (half the paper's numbers).

The kernel-regression level: ridgeless regression with the empirical NTK of each run's
theta_0 (kept as a snapshot at step 0) fitted on the training set, its test loss in
our units: the alpha -> infinity (lazy) limit of GD on the centred model. The NTK is
computed in closed form (`initial_ntk`, checked against autodiff in the test); for p
outputs the NTK traced over outputs (neural-tangents' default), the same kernel for
each output. It does not depend on alpha (a kernel's scale drops out).

Measured per run: t_train, the first record step with training loss <= `train_fit` x its
initial value; t_test, the first with test loss <= `generalized` x the kernel level;
delay = t_test - t_train (their Fig. 3e measures a delay the same way, with absolute
thresholds); the test loss at t_train over the kernel level. Claims, median over seeds:
(1) the training loss falls early: t_train < t_test at every alpha; (2) meanwhile the
test loss sits near the kernel-regression level: at t_train within a factor
`near_factor` of it, at the largest alpha, where training is laziest; (3) then it drops:
t_test exists at every alpha; (4) the delay grows with alpha (strictly, over >= 3 values;
an alpha whose test loss never drops counts as a delay of at least steps - t_train, and
must come after every alpha whose test loss did).

Measured, quick preset (width 500, 8000 steps, alpha 0.5 / 1 / 2 / 4 / 8): kernel level
0.333 (null predictor 0.39); t_train 60 / 95 / 155 / 235 / 345; t_test 140 / 270 / 590 /
1775 / never; delay 80 / 175 / 435 / 1540 / > 7655: the delay grows with alpha. The test
loss does not sit flat at the kernel level: during the lazy phase it overshoots to
1.38-1.52 x the level (as in the authors' own Fig. 1: 0.66 against 0.42), and at t_train,
already falling, it is 0.83-0.92 x the level. Once the training set is interpolated
(loss ~1e-7) learning stops, so the final test loss rises with alpha (0.015 / 0.037 /
0.081 / 0.14 / 0.20): at alpha = 8 it ends at 0.60 x the level and claim (3) fails.

Quick preset (2-core CPU, about 80 s): the polynomial task at the paper's width N = 500,
c = 4, alpha = 0.5, 1, 2, 4, 8, 8000 steps, one seed. Paper preset: the same at
alpha = 2^-2 ... 2^4, 30000 steps, three seeds. "modular" preset: their Fig. 2 (p = 23,
90% train, N = 100, lr 200 / p = their 100, alpha = s^2 = 0.25, 1, 2.25, 4, 100000 steps).
At 30000 steps (CPU, 51 s) it shows no grokking yet: at alpha 0.25 and 1 the test loss
drops with the training loss (t_test 4800 / 24000 before t_train 6000 / 29100); at 2.25
and 4 both are still in the lazy phase (training loss 0.41 / 0.44, test loss rising
towards the kernel level 0.71, which is worse than predicting 0, 0.5).
"""
from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, kernel, models, optim, plot, simulate, sweep
from engine.errors import COUNT, FRACTION, POSITIVE, Range, require

NAME = "grokking_lazy_rich"
PRESETS = {
    "quick": {"task": "polynomial", "d": 100, "n_train": 550, "n_test": 1000, "p": 23, "train_fraction": 0.9,
              "data_seed": 0, "width": 500, "eps": 0.25, "lr": 4000.0, "output_scales": [0.5, 1.0, 2.0, 4.0, 8.0],
              "seeds": 1, "steps": 8000, "every": 5, "train_fit": 0.1, "generalized": 0.5, "near_factor": 1.5},
    "paper": {"task": "polynomial", "d": 100, "n_train": 550, "n_test": 1000, "p": 23, "train_fraction": 0.9,
              "data_seed": 0, "width": 500, "eps": 0.25, "lr": 4000.0,
              "output_scales": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], "seeds": 3, "steps": 30000, "every": 10,
              "train_fit": 0.1, "generalized": 0.5, "near_factor": 1.5},
    "modular": {"task": "modular", "d": 100, "n_train": 550, "n_test": 1000, "p": 23, "train_fraction": 0.9,
                "data_seed": 0, "width": 100, "eps": 0.25, "lr": 200 / 23, "output_scales": [0.25, 1.0, 2.25, 4.0],
                "seeds": 1, "steps": 100000, "every": 100, "train_fit": 0.1, "generalized": 0.5,
                "near_factor": 1.5},
}
RANGES = {"d": COUNT, "n_train": Range(2, integer=True), "n_test": COUNT, "p": Range(2, integer=True),
          "train_fraction": FRACTION, "data_seed": Range(0, integer=True), "width": COUNT, "eps": Range(0),
          "lr": POSITIVE, "output_scales": POSITIVE, "train_fit": FRACTION, "generalized": FRACTION,
          "near_factor": Range(1, lo_open=True)}
PROBES = ("loss", "test_loss")


def kumar_two_layer(d: int, width: int, eps: float) -> models.Model:
    """f(x) = (1/N) sum_i phi(w_i . x / sqrt(d)), phi(h) = h + eps h^2 / 2, no readouts
    (Kumar et al.'s polynomial network). params: ({"w": [d, N]},), w ~ N(0, 1); x: [n, d]
    -> [n, 1]."""
    def apply(params, x):
        h = x @ params[0]["w"] / math.sqrt(d)
        return jnp.mean(h + 0.5 * eps * h * h, axis=-1, keepdims=True)
    return models.Model(lambda key: ({"w": jax.random.normal(key, (d, width))},), apply,
                        f"kumar{d}-{width}-eps{eps:g}", out_dim=1)


def task_of(config: dict):
    """(model, dataset) of the config's task."""
    require(config["task"] in ("polynomial", "modular"), "task", f"got {config['task']!r}",
            "use 'polynomial' or 'modular'")
    if config["task"] == "polynomial":
        return (kumar_two_layer(config["d"], config["width"], config["eps"]),
                data.quadratic_index(config["d"], config["n_train"], config["n_test"], config["data_seed"]))
    p = config["p"]
    return (models.mlp((2 * p, config["width"], p), "quadratic", bias=False, parameterization="mean_field"),
            data.modular(p, "+", config["train_fraction"], config["data_seed"], "one_hot"))


def initial_ntk(config: dict, params, x1, x2) -> jax.Array:
    """The empirical NTK of f (not yet scaled by alpha^2), traced over outputs and divided by
    their number: K(x, x') = (1/p) sum_j <grad f_j(x), grad f_j(x')>. x1: [n1, D], x2:
    [n2, D] -> [n1, n2]. Two-layer f_j = (1/N) sum_i a_ij phi(w_i . x / sqrt(D)):
    K = [(x1 x2^T / D) * (phi'(H1) diag(c) phi'(H2)^T) + phi(H1) phi(H2)^T (readouts
    trained)] / N^2, c_i = mean_j a_ij^2 (1 without readouts)."""
    w = params[0]["w"]
    D, N = w.shape
    h1, h2 = x1 @ w / math.sqrt(D), x2 @ w / math.sqrt(D)
    if config["task"] == "polynomial":
        eps = config["eps"]
        return (x1 @ x2.T / D) * ((1 + eps * h1) @ (1 + eps * h2).T) / N ** 2
    a = params[1]["w"]                                           # [N, p]
    c = jnp.mean(a * a, axis=1)
    return ((x1 @ x2.T / D) * ((2 * h1 * c) @ (2 * h2).T) + (h1 * h1) @ (h2 * h2).T) / N ** 2


def kernel_test_loss(config: dict, params, d: data.Dataset) -> jax.Array:
    """Test loss (0.5 mean_n sum_outputs squared error) of ridgeless kernel regression
    with `initial_ntk` at `params` on the training set (minimum-norm solution)."""
    x, y, xt, yt = (jnp.asarray(v) for v in (d.x, d.y, d.x_test, d.y_test))
    predicted = kernel.ridgeless_predict(initial_ntk(config, params, x, x), initial_ntk(config, params, xt, x), y)
    return 0.5 * jnp.mean(jnp.sum((predicted - yt) ** 2, axis=-1))


def run_sweep(config: dict, **options):
    model, d = task_of(config)
    sim = simulate.simulation(model, d, "mse", optim.gd(lr=config["lr"]), init=init.scaled(model),
                              steps=config["steps"], every=config["every"], probes=PROBES,
                              output_scale=1.0, scale_loss=True, snapshots=[0])
    ds = sweep.sweep(sim, grid={"output_scale": [float(a) for a in config["output_scales"]]},
                     seeds=config["seeds"], **options)
    theta0 = ds.params_snapshot.isel(snapshot_step=0)
    flat = theta0.stack(run=theta0.dims[:-1]).transpose("run", "parameter")
    levels = [float(kernel_test_loss(config, sim.unravel(row), d)) for row in flat.values]
    level = xr.DataArray(levels, coords={"run": flat.run}, dims="run").unstack("run")
    return ds.drop_vars(["params_snapshot", "snapshot_step"]).assign(kernel_test_loss=level)


def milestones(ds, config: dict) -> xr.Dataset:
    level = ds.kernel_test_loss
    t_train = analysis.first_time(ds.loss <= config["train_fit"] * ds.loss.isel(step=0, drop=True))
    t_test = analysis.first_time(ds.test_loss <= config["generalized"] * level)
    at_fit = ds.test_loss.sel(step=t_train.fillna(ds.step[-1])).drop_vars("step")
    return xr.Dataset({"t_train": t_train, "t_test": t_test, "delay": t_test - t_train,
                       "test_over_kernel_at_t_train": (at_fit / level).where(t_train.notnull()),
                       "peak_test_over_kernel": ds.test_loss.max("step") / level,
                       "kernel_test_loss": level, "final_loss": ds.loss.isel(step=-1, drop=True),
                       "final_test_loss": ds.test_loss.isel(step=-1, drop=True)})


def delay_bounds(m: xr.Dataset, steps: int) -> np.ndarray:
    """The delay per alpha, where the test loss never dropped within the run its lower
    bound steps - t_train (censored); NaN where the training loss was never fit."""
    never = m.t_test.isnull() & m.t_train.notnull()
    return np.where(never, steps - m.t_train, m.delay)


def summarize(ds, config: dict) -> dict:
    m = milestones(ds, config).median("seed")
    per = {f"alpha={a:g}": {k: None if np.isnan(v) else round(float(v), 4) for k, v in
                            ((k, float(m[k].sel(output_scale=a))) for k in m.data_vars)}
           for a in m.output_scale.values}
    bound = delay_bounds(m, config["steps"])
    never = m.t_test.isnull().values
    near = float(m.test_over_kernel_at_t_train.isel(output_scale=-1))
    f = config["near_factor"]
    return {"per_alpha": per, "delay_or_lower_bound": [round(float(v), 1) for v in bound], "claims": {
        "the training loss falls early: t_train < t_test (or the test loss never drops) at every alpha":
            bool(np.all(m.t_train.notnull()) and np.all(never | (m.t_train < m.t_test).values)),
        f"the test loss sits near the initial-NTK kernel-regression level (within x{f:g}) when the training "
        "loss is fit, at the largest alpha": bool(1 / f <= near <= f),
        f"then it drops below {config['generalized']:g} x that level, at every alpha within the run":
            bool(not never.any()),
        "the delay t_test - t_train grows with alpha (strictly, >= 3 values; a drop never reached counts as "
        "steps - t_train, and only after every reached one)":
            bool(len(bound) >= 3 and np.all(np.isfinite(bound)) and np.all(np.diff(bound) > 0)
                 and not np.any(never[:-1] & ~never[1:]))}}


def figures(ds, config: dict, out_dir) -> list[str]:
    ds = ds.sel(step=ds.step > 0)
    level = float(ds.kernel_test_loss.median())
    refs = {a: level for a in ds.output_scale.values}
    title = (f"Lazy-to-rich grokking ({config['task']}, width {config['width']}, GD lr {config['lr']:g} on "
             "L/alpha^2)\ndashed: test loss of kernel regression with the initial NTK")
    rows = [{"da": ds.loss, "ylabel": "train loss", "logy": True},
            {"da": ds.test_loss, "ylabel": "test loss", "refs": refs}]
    return [plot.panels(f"{out_dir}/grokking_lazy_rich.png", rows, hue="output_scale", title=title, logx=True)]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
