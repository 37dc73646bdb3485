"""Exact learning dynamics of a deep linear network: from a small initialization each
mode of the target map is learned in a sigmoidal transition, strongest mode first.

Saxe, McClelland & Ganguli 2014, "Exact solutions to the nonlinear dynamics of
learning in deep linear neural networks" (ICLR 2014). A two-layer linear network
f(x) = W_2 W_1 x (`engine.models.mlp((d_in, hidden, d_out), "linear", bias=False)`)
is trained by full-batch GD on L = 1/(2n) sum_i ||f(x_i) - y_i||^2 (our "mse"), with
inputs whitened over the n examples (1/n sum x x^T = I exactly) and targets y = M x,
M = U S V^T with distinct singular values s_1 > s_2 > ... (U, V orthonormal, drawn
from `data_seed`). Then the input-output correlation is Sigma_yx = M and, with
tau = 1/eta, gradient flow is tau dW_1/dt = W_2^T (M - W_2 W_1),
tau dW_2/dt = (M - W_2 W_1) W_1^T.

Their closed form: from a balanced, decoupled start (W_1 = sqrt(u_0) R V^T,
W_2 = sqrt(u_0) U R^T, R any orthonormal [hidden, modes]; `decoupled`) every mode
a_i = u_i^T W_2 W_1 v_i obeys tau da/dt = 2 a (s - a), so
    a_i(t) = s_i e^{2 s_i t/tau} / (e^{2 s_i t/tau} - 1 + s_i/u_0),
a sigmoid that reaches s_i/2 at t_i = (tau / (2 s_i)) ln(s_i/u_0 - 1): the weaker the
mode, the later and the sharper its transition (their Eq. 9 and the time
~ (tau / s) ln(s / u_0) up to the factor 2 of this two-layer case). GD with step eta
follows the flow at t = step x eta (tau = 1, time in units of steps x eta) with an
O(eta s) error per transition.

Runs: the decoupled start over a traced grid of u_0 (one program, float64), each seed
drawing its own R (the closed form does not depend on R: a check of that too); and a
small random start (W ~ N(0, init_scale^2), `init.scaled` of a 1/fan_in-variance
draw), where the modes are coupled at first and the closed form holds only
approximately (reported, with its order). `mode_strength` records a_i(t) for every mode.

GD itself, from the balanced decoupled start, stays balanced and decoupled: each layer's
mode b_i (a_i = b_i^2) steps b <- b + eta b (s - b^2), so a_i follows the map
a_{k+1} = a_k (1 + eta (s_i - a_k))^2 exactly (`discrete_map`). Its growth per step,
ln (1 + eta s)^2 = 2 eta s (1 - eta s / 2 + ...), lags the flow's 2 eta s, which delays
the transition by about eta ln(s/u_0) / 4 in t, and at the sigmoid's steepest slope
(s^2 / 2) puts the flow's curve off by about eta s^2 ln(s/u_0) / 8: `discretization`.

Claims: (1) from the decoupled start the measured a_i(k) equal the exact GD map to
1e-9 x s_i at every record, mode, u_0 and seed (float64: the engine's whole training
path, checked against arithmetic); (2) they follow the paper's closed form within
the discretization estimate, |a_i - a_flow| <= eta s_i^2 ln(s_i/u_0) / 8 + 1e-3 s_i
(we first stated a flat 2% of s_i; the strongest mode at u_0 = 1e-4 is off by 3.1%,
below its estimate 3.9%, which is why the bound is the estimate); (3) the half-times
match (1 / (2 s_i)) ln(s_i/u_0 - 1) within 2%; (4) from the random small start the
modes are learned in order of s, strongest first.

Quick preset (~10 s): d_in 6, d_out 5, hidden 8, n 64, s = 3, 2, 1, 0.5, u_0 in
{1e-4, 1e-2}, eta 0.01, 3000 steps, 2 seeds; random start std 0.03. Measured: GD
equals the exact map to 1.1e-14 s_i; the closed form to 3.1%, 1.9%, 0.9%, 0.4% of s_i
at u_0 = 1e-4 (estimates 4.0%, 2.6%, 1.3%, 0.6%); half-times 1.739 / 2.495 / 4.623 /
8.533 against 1.718 / 2.476 / 4.605 / 8.517 (in t = step x eta; within 1.3%); from the
random start 1.37 / 2.14 / 4.05 / 7.50, strongest first, earlier than u_0 = 1e-4.
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import POSITIVE, Range, require

NAME = "deep_linear"
PRESETS = {
    "quick": {"d_in": 6, "d_out": 5, "hidden": 8, "n": 64, "singular_values": [3.0, 2.0, 1.0, 0.5],
              "u0s": [1e-4, 1e-2], "random_init_scale": 0.03, "lr": 0.01, "seeds": 2, "steps": 3000, "every": 10,
              "data_seed": 0},
    "paper": {"d_in": 32, "d_out": 24, "hidden": 32, "n": 256, "singular_values": [5.0, 4.0, 3.0, 2.0, 1.0, 0.5],
              "u0s": [1e-6, 1e-4, 1e-2], "random_init_scale": 0.01, "lr": 0.002, "seeds": 4, "steps": 40000,
              "every": 20, "data_seed": 0},
}
RANGES = {"d_in": Range(1, integer=True), "d_out": Range(1, integer=True), "hidden": Range(1, integer=True),
          "n": Range(2, integer=True), "singular_values": POSITIVE, "u0s": POSITIVE, "random_init_scale": POSITIVE,
          "lr": POSITIVE, "data_seed": Range(0, integer=True)}


def task(config: dict):
    """(Dataset with whitened x [n, d_in] and y = x M^T [n, d_out]; U [d_out, k],
    S [k], V [d_in, k])."""
    s = np.asarray(config["singular_values"], float)
    k = len(s)
    require(np.all(np.diff(s) < 0), "singular_values", f"got {list(s)}", "give distinct values, largest first")
    require(k <= min(config["d_in"], config["d_out"], config["hidden"]), "singular_values",
            f"{k} modes for d_in {config['d_in']}, d_out {config['d_out']}, hidden {config['hidden']}",
            "use at most min(d_in, d_out, hidden) values")
    require(config["n"] > config["d_in"], "n", f"{config['n']} examples cannot be whitened in {config['d_in']} "
            "dimensions", f"use n > d_in = {config['d_in']}")
    rng = np.random.default_rng(config["data_seed"])
    orthonormal = lambda rows: np.linalg.qr(rng.standard_normal((rows, k)))[0]
    U, V = orthonormal(config["d_out"]), orthonormal(config["d_in"])
    x = rng.standard_normal((config["n"], config["d_in"]))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(x.T @ x / len(x))).T  # 1/n x^T x = I exactly
    M = U @ np.diag(s) @ V.T
    return data.Dataset(x, x @ M.T), U, s, V


def decoupled(model: models.Model, U, V) -> init.Initializer:
    """W_1 = sqrt(u_0) R V^T, W_2 = sqrt(u_0) U R^T with R [hidden, k] orthonormal, drawn
    from the run's key: a balanced start on the target's modes (hyperparameter u0).
    In the layout of `models.mlp` (f = x W_1 W_2 with W_l [fan_in, fan_out])."""
    hidden, k = model.layer_shapes[0][1], U.shape[1]

    def sample(key, hp):  # U, V become arrays here, at trace time: float64 under x64
        R = jnp.linalg.qr(jax.random.normal(key, (hidden, k), jnp.result_type(float)))[0]
        root = jnp.sqrt(hp["u0"])
        return ({"w": root * jnp.asarray(V) @ R.T}, {"w": root * R @ jnp.asarray(U).T})
    return init.Initializer("saxe_decoupled", {"u0": 1e-3}, sample)


def closed_form(s, u0, t):
    """a(t) = s e^{2st} / (e^{2st} - 1 + s/u0), t in units of tau (= steps x eta)."""
    e = np.exp(np.minimum(2 * s * t, 700.0))
    return s * e / (e - 1 + s / u0)


def discrete_map(s, u0, lr, steps: int):
    """a_k of GD from the balanced decoupled start: a_{k+1} = a_k (1 + eta (s - a_k))^2,
    k = 0..steps (float64): [..., steps + 1] for broadcastable s, u0."""
    s, u0 = np.broadcast_arrays(np.asarray(s, float), np.asarray(u0, float))
    out = np.empty(s.shape + (steps + 1,))
    a = u0.copy()
    for k in range(steps + 1):
        out[..., k] = a
        a = a * (1 + lr * (s - a)) ** 2
    return out


def discretization(s, u0, lr):
    """The flow's curve off from GD's by about eta s^2 ln(s/u0) / 8 (module docstring)."""
    return lr * s ** 2 * np.log(s / u0) / 8


def half_time(s, u0):
    """t at which a = s/2: (1 / (2 s)) ln(s/u0 - 1), in units of tau."""
    return np.log(s / u0 - 1) / (2 * s)


def build(config: dict):
    """start ("decoupled" or "random") -> Simulation."""
    d, U, s, V = task(config)
    model = models.mlp((config["d_in"], config["hidden"], config["d_out"]), "linear", bias=False)
    strength = probes.scalar("mode_strength", lambda snap: jnp.einsum(
        "ik,ij,jk->k", jnp.asarray(V), snap.params[0]["w"] @ snap.params[1]["w"], jnp.asarray(U)), dims=("mode",))

    def at(start):
        require(start in ("decoupled", "random"), "start", f"unknown value {start!r}", "use decoupled or random")
        scheme = decoupled(model, U, V) if start == "decoupled" else init.scaled(model)
        return simulate.simulation(model, d, "mse", optim.gd(lr=config["lr"]), scheme, steps=config["steps"],
                                   every=config["every"], probes=("loss", strength))
    return at


def run_sweep(config: dict, **options):
    at = build(config)
    runs = sweep.sweep(at("decoupled"), grid={"u0": [float(u) for u in config["u0s"]]}, seeds=config["seeds"],
                       name="decoupled", x64=True, **options)
    rand = sweep.sweep(at("random"), grid={"init_scale": [float(config["random_init_scale"])]},
                       seeds=config["seeds"], name="random", x64=True, **options).isel(init_scale=0, drop=True)
    s = np.asarray(config["singular_values"], float)
    return runs.assign(random_mode_strength=rand.mode_strength, random_loss=rand.loss).assign_coords(
        mode=np.arange(len(s)), singular_value=("mode", s))


def theory(ds, config: dict) -> xr.DataArray:
    """The closed form at every record: [u0, mode, step]."""
    t = ds.step.values * config["lr"]
    s, u0 = ds.singular_value.values, ds.u0.values
    return xr.DataArray(closed_form(s[None, :, None], u0[:, None, None], t[None, None, :]),
                        coords={"u0": ds.u0, "mode": ds.mode, "step": ds.step}, dims=("u0", "mode", "step"))


def summarize(ds, config: dict) -> dict:
    lr = config["lr"]
    s = ds.singular_value
    error = (abs(ds.mode_strength - theory(ds, config)) / s).max("step")  # [seed, u0, mode]
    exact = discrete_map(s.values[None, :], ds.u0.values[:, None], lr, config["steps"])[..., ds.step.values]
    exact = xr.DataArray(exact, coords={"u0": ds.u0, "mode": ds.mode, "step": ds.step}, dims=("u0", "mode", "step"))
    gd_error = (abs(ds.mode_strength - exact) / s).max("step")
    bound = xr.DataArray(discretization(s.values[None, :], ds.u0.values[:, None], lr) / s.values + 1e-3,
                         coords={"u0": ds.u0, "mode": ds.mode}, dims=("u0", "mode"))
    t_half = analysis.crossing_time(ds.mode_strength, s / 2) * lr
    predicted = xr.DataArray(half_time(s.values[None, :], ds.u0.values[:, None]),
                             coords={"u0": ds.u0, "mode": ds.mode}, dims=("u0", "mode"))
    rel = abs(t_half - predicted) / predicted
    random_half = analysis.crossing_time(ds.random_mode_strength, s / 2) * lr  # [seed, mode]
    ordered = bool(np.all(np.diff(random_half.transpose("seed", "mode").values, axis=-1) > 0))
    return {
        "max_error_against_gd_map_over_s": float(gd_error.max()),
        "discretization_estimate_over_s": {f"u0={u:g}": [round(float(bound.sel(u0=u, mode=m)), 5)
                                                         for m in ds.mode.values] for u in ds.u0.values},
        "max_error_over_s": {f"u0={u:g}": [round(float(error.sel(u0=u).max("seed").sel(mode=m)), 5)
                                           for m in ds.mode.values] for u in ds.u0.values},
        "half_time_measured": {f"u0={u:g}": [round(float(t_half.sel(u0=u).median("seed").sel(mode=m)), 3)
                                             for m in ds.mode.values] for u in ds.u0.values},
        "half_time_predicted": {f"u0={u:g}": [round(float(predicted.sel(u0=u, mode=m)), 3) for m in ds.mode.values]
                                for u in ds.u0.values},
        "random_start_half_time": [round(float(random_half.median("seed").sel(mode=m)), 3) for m in ds.mode.values],
        "claims": {
            "decoupled start: GD's a_i(k) equal the exact map a <- a (1 + eta (s - a))^2 within 1e-9 s_i":
                bool(float(gd_error.max()) <= 1e-9),
            "and the paper's closed form within the discretization estimate eta s^2 ln(s/u0) / 8 + 1e-3 s":
                bool((error <= bound).all()),
            "half-times match (1/(2s)) ln(s/u0 - 1) within 2%": bool(float(rel.max()) <= 0.02),
            "random small start: modes learned in order of s, strongest first":
                ordered and bool(np.isfinite(random_half.values).all())}}


def figures(ds, config: dict, out_dir) -> list[str]:
    fig, axes = plot.figure(1, 2, (12, 4.5))
    th = theory(ds, config)
    t = ds.step * config["lr"]
    u = float(ds.u0.min())
    for m, c in zip(ds.mode.values, plot.plt.cm.viridis(np.linspace(0, 0.9, ds.sizes["mode"]))):
        s = float(ds.singular_value.sel(mode=m))
        axes[0].plot(t, th.sel(u0=u, mode=m), color=c, lw=3, alpha=0.35)
        axes[0].plot(t, ds.mode_strength.sel(u0=u, mode=m).isel(seed=0), "--", color=c, lw=1.2, label=f"s = {s:g}")
        axes[1].plot(t, ds.random_mode_strength.sel(mode=m).isel(seed=0), color=c, label=f"s = {s:g}")
        axes[1].plot(t, th.sel(u0=u, mode=m), ":", color=c, lw=1)
    axes[0].set(xlabel="t = step x eta", ylabel="mode strength a_i = u_i^T W2 W1 v_i",
                title=f"decoupled start u0 = {u:g}: GD (dashed) on the closed form (thick)")
    axes[1].set(xlabel="t = step x eta", title=f"random start, std {config['random_init_scale']:g}\n"
                f"(dotted: the closed form at u0 = {u:g})")
    axes[0].legend(fontsize=8)
    fig.suptitle("Deep linear network (Saxe et al. 2014): modes learned strongest first, each in a sigmoid")
    return [plot.save(fig, f"{out_dir}/deep_linear.png")]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
