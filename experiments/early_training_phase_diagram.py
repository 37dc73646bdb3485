"""The phase diagram of early training: eta = c / lambda_0 against depth and width.

Kalra & Barkeshli 2023, "Phase diagram of early training dynamics in deep neural networks:
effect of the learning rate, depth, and width" (NeurIPS 2023). Fully connected ReLU
networks of depth d (weight layers) and width w, standard parameterization with He
initialization (W ~ N(0, 2/fan_in), biases zero, trained), are trained by full-batch GD on
the square loss L = 1/n sum_i 1/2 ||f(x_i) - y_i||^2 with eta = c / lambda_0, lambda_0 the
sharpness (top Hessian eigenvalue) of each run at its own initialization. The first steps
show critical values of c:
    c_loss   the loss rises at first (the catapult; c_loss = 2 on a quadratic);
    c_sharp  the sharpness falls at first;
    c_max    training diverges.
They report c_loss ~ 2 and c_max ~ 4 when d/w is small, and a "sharpness reduction"
phase c_sharp < c < c_loss that opens as d/w grows. With it we relate the maximal initial
learning rate of Iyer, Hanin & Rolnick 2023, eta* = c_max / lambda_0, which they find to
be a power of depth x width: we fit log eta* = a0 + a log d + b log w and
log eta* = p0 + p log(d w) by least squares and report the exponents with their standard
errors (no exponent is assumed).

lambda_0 is measured inside each run: a probe at step 0 measures the sharpness (Lanczos)
and sets the run's learning rate to c / lambda_0, c a traced hyperparameter held by the
optimizer (`gd_with_c`), so c is a grid axis of one compiled program per (d, w); the same
probe records the sharpness at every step after. Depth and width change shapes: static axes.

Choices the paper leaves open, ours: data, the first `n_train` of scikit-learn's digits
(64 standardized pixels, one-hot targets; the paper uses CIFAR-10/MNIST subsets); d counts
weight layers (d = 2 is one hidden layer); the early window is the first `early` steps;
"the loss rises": max_{1<=t<=early} L_t > L_0, or the run diverged; "the sharpness falls":
min_{1<=t<=early} lambda_t < (1 - `sharp_drop`) lambda_0; "diverged": the engine's flag
(loss non-finite or above `diverge_above`) within `steps` steps. Per seed a critical c is
the smallest c of the grid at which the event happens (NaN if none does); the summary gives
the median over seeds, so values have the grid's resolution (`cs`, log-spaced).
eta* per (d, w) is the median over seeds of c_max / lambda_0.

Claims (tolerances fixed before looking at results), at the smallest d/w of the sweep:
c_loss in [1.5, 3] and c_max in [3, 6]; the sharpness-reduction phase opens: at the largest
d/w c_sharp < c_loss, and the ratio c_loss / c_sharp is larger there than at the smallest
d/w; eta* is a power of d w: the one-variable fit has R^2 >= 0.9 and a negative exponent.

Quick preset: 64 digits, d in {2, 4, 8} x w in {32, 128, 512} with d w <= 1024 (7 nets,
d/w from 1/256 to 1/4), c in 0.5 .. 64 (2^(1/4) steps), 2 seeds, 20 steps with the
sharpness every step. (A first grid stopped at c = 16: c_max and c_loss of the deep nets
lay beyond it, so it was extended; the claims and tolerances were not changed.) Measured
on it: at d=2, w=512 c_sharp = c_loss = 2.38, c_max = 4.76; c_loss / c_sharp grows with
d/w from 1 to 83 (d=8, w=32: c_sharp <= 0.5, the grid's floor, c_loss = 41.7, c_max = 64,
the grid's top); eta* = A (d w)^p with p = -0.88 +- 0.11 (R^2 0.93), or d^-0.84(0.21)
w^-0.89(0.12). Paper preset: d up to 16, w up to 1024, 4096 examples of a user .npz
(`--set data=/path/cifar10.npz`), c from 0.25 to 128, 8 seeds, 100 steps.
"""
from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from jax.flatten_util import ravel_pytree

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import COUNT, FRACTION, POSITIVE, Range, require
from engine.probes import Probe

NAME = "early_training_phase_diagram"
PRESETS = {
    "quick": {"data": "digits", "n_train": 64, "depths": [2, 4, 8], "widths": [32, 128, 512],
              "cs": [round(0.5 * 2 ** (k / 4), 4) for k in range(29)], "activation": "relu", "seeds": 2,
              "steps": 20, "early": 10, "sharp_drop": 0.05, "diverge_above": 1e6, "max_depth_times_width": 1024},
    "paper": {"data": "cifar10.npz", "n_train": 4096, "depths": [2, 4, 8, 16], "widths": [128, 256, 512, 1024],
              "cs": [round(0.25 * 2 ** (k / 8), 4) for k in range(73)], "activation": "relu", "seeds": 8,
              "steps": 100, "early": 10, "sharp_drop": 0.05, "diverge_above": 1e6, "max_depth_times_width": None},
}
RANGES = {"n_train": COUNT, "depths": Range(2, integer=True), "widths": COUNT, "cs": POSITIVE, "steps": COUNT,
          "early": COUNT, "sharp_drop": FRACTION, "diverge_above": POSITIVE,
          "max_depth_times_width": Range(1, none_ok=True)}
CLAIM_C_LOSS, CLAIM_C_MAX = (1.5, 3.0), (3.0, 6.0)


def gd_with_c(c: float = 2.0) -> optim.Optimizer:
    """GD whose state also holds c (unused by the update), the number the step-size probe
    turns into eta = c / lambda_0."""
    return optim.Optimizer("gd", {"lr": 1.0, "c": c}, {"lr": POSITIVE, "c": POSITIVE},
                           optax.inject_hyperparams(lambda lr, c: optax.sgd(lr))(lr=1.0, c=c))


def sharpness_and_initial_step(sharp: Probe) -> Probe:
    """`sharp` at every record; at step 0 it also sets lr = c / lambda_0 (c from the
    optimizer state), kept for the whole run and recorded as `lr`."""
    def init(params):
        flat = ravel_pytree(params)[0]
        return {"eigen": sharp.init(params), "lr": jnp.zeros((), flat.dtype)}

    def measure(snap, state):
        values, eigen = sharp.measure(snap, state["eigen"])
        lr = optim.hyperparams(snap.opt_state)["c"] / values["sharpness"] if snap.first else state["lr"]
        return {**values, "lr": lr}, {"eigen": eigen, "lr": lr}
    return Probe("sharpness_and_initial_step", measure, {**sharp.outputs, "lr": ()}, init, sets=("lr",))


def build(config: dict):
    require(config["early"] <= config["steps"], "early", f"{config['early']} > steps = {config['steps']}",
            "use early <= steps")
    d = data.named(config["data"], config["n_train"])

    def at(depth: int, width: int) -> simulate.Simulation:
        model = models.mlp((d.x.shape[1], *[width] * (depth - 1), d.y.shape[1]), config["activation"])
        sharp = probes.sharpness(iters=20, warm_iters=5)
        return simulate.simulation(model, d, "mse", gd_with_c(), init.standard(model, "he"), steps=config["steps"],
                                   every=1, probes=("loss", sharpness_and_initial_step(sharp)),
                                   diverge_above=config["diverge_above"])
    return at


def nets(config: dict) -> list[tuple[int, int]]:
    """The (depth, width) pairs swept: every pair of `depths` x `widths` with
    d * w <= `max_depth_times_width` (None: all), so that the deep-and-wide corner, which
    costs the most and adds nothing at small d/w, can be left out on a CPU."""
    cap = config["max_depth_times_width"]
    out = [(d, w) for d in config["depths"] for w in config["widths"] if cap is None or d * w <= cap]
    require(len(out) >= 1, "max_depth_times_width", f"{cap} leaves no (depth, width) pair",
            f"use at least {min(config['depths']) * min(config['widths'])}, or None")
    return out


def run_sweep(config: dict, **options):
    """One sweep per (depth, width) (a static pair: one compiled program each), over
    seeds x c, joined along a `net` dimension with `depth` and `width` as its coordinates."""
    at = build(config)
    parts = [sweep.sweep(at(d, w), grid={"c": [float(c) for c in config["cs"]]}, seeds=config["seeds"],
                         name=f"d{d}_w{w}", **options).expand_dims(net=[i]).assign_coords(
                             depth=("net", [d]), width=("net", [w]))
             for i, (d, w) in enumerate(nets(config))]
    return xr.concat(parts, dim="net", combine_attrs="override")


def events(ds, config: dict) -> xr.Dataset:
    """Per run [seed, net, c]: loss_rises, sharpness_falls, diverged (bools)."""
    window = ds.isel(step=slice(1, config["early"] + 1))
    loss0, sharp0 = ds.loss.isel(step=0), ds.sharpness.isel(step=0)
    return xr.Dataset({"loss_rises": (window.loss.max("step") > loss0) | ds.diverged,
                       "sharpness_falls": window.sharpness.min("step") < (1 - config["sharp_drop"]) * sharp0,
                       "diverged": ds.diverged})


def critical(ev: xr.Dataset) -> xr.Dataset:
    """Per seed, the smallest c at which each event happens (NaN if at none):
    c_sharp, c_loss, c_max [seed, net]."""
    c = ev.c.broadcast_like(ev.diverged)
    first = lambda hit: c.where(hit).min("c")
    return xr.Dataset({"c_sharp": first(ev.sharpness_falls), "c_loss": first(ev.loss_rises),
                       "c_max": first(ev.diverged)})


def initial_sharpness(ds) -> xr.DataArray:
    """lambda_0 [seed, net] (the same theta_0, and the same Lanczos start, at every c)."""
    return ds.sharpness.isel(step=0, c=0)


def eta_star(ds, crit) -> xr.DataArray:
    """eta* = c_max / lambda_0, median over seeds: [net]."""
    return (crit.c_max / initial_sharpness(ds)).median("seed")


def _value(x):
    v = float(x)
    return None if np.isnan(v) else round(v, 4)


def table(ds, config: dict) -> dict:
    """Per net "d=..,w=..", in order of d/w: the critical c (median over seeds), lambda_0,
    eta*, and whether the sharpness-reduction phase c_sharp < c < c_loss is open."""
    crit = critical(events(ds, config))
    mid, eta, lam0 = crit.median("seed"), eta_star(ds, crit), initial_sharpness(ds).median("seed")
    rows = {}
    for i in np.argsort((ds.depth / ds.width).values, kind="stable"):
        d, w = int(ds.depth[i]), int(ds.width[i])
        row = {k: _value(mid[k][i]) for k in ("c_sharp", "c_loss", "c_max")}
        rows[f"d={d},w={w}"] = {"depth": d, "width": w, "d_over_w": round(d / w, 5), **row,
                                "c_per_seed": {k: [_value(v) for v in crit[k].isel(net=i).values] for k in crit},
                                "lambda0_median": _value(lam0[i]), "eta_star": _value(eta[i]),
                                "sharpness_reduction_phase": None if None in (row["c_sharp"], row["c_loss"])
                                else row["c_sharp"] < row["c_loss"]}
    return rows


def summarize(ds, config: dict) -> dict:
    rows = table(ds, config)
    names = list(rows)
    small, large = rows[names[0]], rows[names[-1]]
    eta = np.array([r["eta_star"] if r["eta_star"] is not None else np.nan for r in rows.values()])
    d, w = (np.array([r[k] for r in rows.values()], float) for k in ("depth", "width"))
    fit_dw, fit_prod = analysis.power_law_fit(eta, d, w), analysis.power_law_fit(eta, d * w)
    ratio = lambda r: None if None in (r["c_sharp"], r["c_loss"]) else r["c_loss"] / r["c_sharp"]
    claims = {
        f"smallest d/w ({names[0]}): c_loss in {list(CLAIM_C_LOSS)}":
            small["c_loss"] is not None and CLAIM_C_LOSS[0] <= small["c_loss"] <= CLAIM_C_LOSS[1],
        f"smallest d/w ({names[0]}): c_max in {list(CLAIM_C_MAX)}":
            small["c_max"] is not None and CLAIM_C_MAX[0] <= small["c_max"] <= CLAIM_C_MAX[1],
        f"sharpness reduction opens: at the largest d/w ({names[-1]}) c_sharp < c_loss, and c_loss / c_sharp "
        "exceeds its value at the smallest d/w":
            bool(large["sharpness_reduction_phase"]) and ratio(large) is not None
            and (ratio(small) is None or ratio(large) > ratio(small)),
        "eta* is a power of d*w: R^2 >= 0.9 with a negative exponent":
            fit_prod["r2"] is not None and fit_prod["r2"] >= 0.9 and fit_prod["exponents"][0] < 0,
    }
    return {"per_net": rows, "c_loss_over_c_sharp": {k: ratio(r) and round(ratio(r), 3) for k, r in rows.items()},
            "eta_star_fit_depth_width": {"form": "eta* = A d^a w^b", **fit_dw},
            "eta_star_fit_product": {"form": "eta* = A (d w)^p", **fit_prod},
            "diverged_runs": int(ds.diverged.sum()),
            "max_eigen_residual_of_runs_that_did_not_diverge": float(ds.eigen_residual.where(~ds.diverged).max()),
            "claims": claims}


def figures(ds, config: dict, out_dir) -> list[str]:
    rows = table(ds, config)
    fig, (ax, bx) = plot.figure(1, 2, (12.5, 4.8))
    styles = dict(zip(sorted({r["depth"] for r in rows.values()}), ("-", "--", ":", "-.")))
    for name, marker, color in (("c_sharp", "v", "C0"), ("c_loss", "o", "C1"), ("c_max", "x", "C3")):
        for d, style in styles.items():
            mine = sorted((r for r in rows.values() if r["depth"] == d), key=lambda r: r["d_over_w"])
            ax.plot([r["d_over_w"] for r in mine], [np.nan if r[name] is None else r[name] for r in mine],
                    marker + style, color=color, ms=7, lw=0.9, label=name if style == "-" else None)
    for d, style in styles.items():
        ax.plot([], [], "k" + style, lw=0.9, label=f"d = {d} (w varies)")
    for y in (2, 4):
        ax.axhline(y, color="grey", ls=":", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="d / w", ylabel="c = eta lambda_0",
           title=f"critical c, median over {ds.sizes['seed']} seeds (grid {min(config['cs']):g}..{max(config['cs']):g});"
                 " dotted: 2, 4")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fit = summarize(ds, config)["eta_star_fit_product"]
    depths = sorted({r["depth"] for r in rows.values()})
    for i, d in enumerate(depths):
        mine = [r for r in rows.values() if r["depth"] == d and r["eta_star"] is not None]
        bx.plot([r["depth"] * r["width"] for r in mine], [r["eta_star"] for r in mine], "o", color=f"C{i}",
                label=f"d = {d}")
    if fit["exponents"] is not None:
        dw = np.geomspace(min(r["depth"] * r["width"] for r in rows.values()),
                          max(r["depth"] * r["width"] for r in rows.values()), 50)
        bx.plot(dw, fit["prefactor"] * dw ** fit["exponents"][0], "k--", lw=1,
                label=f"fit: (d w)^({fit['exponents'][0]:.2f} +- {fit['stderr'][0]:.2f}), R^2 {fit['r2']:.2f}")
    bx.set(xscale="log", yscale="log", xlabel="depth x width", ylabel="eta* = c_max / lambda_0",
           title="maximal initial learning rate (Iyer et al. 2023)")
    bx.grid(alpha=0.3, which="both")
    bx.legend(fontsize=8)
    fig.suptitle(f"ReLU FCNs (He init), GD on {config['data']} (n = {config['n_train']}), eta = c / lambda_0: "
                 "early-training phase diagram (Kalra & Barkeshli 2023)")
    paths = [plot.save(fig, f"{out_dir}/phase_diagram.png")]
    near = (0.5, 1, 2, 2.8, 4, 5.6, 11, 32)  # around the critical lines
    picks = sorted({float(ds.c.values[np.abs(np.log(ds.c.values / t)).argmin()]) for t in near})
    lines = []
    for name in (list(rows)[0], list(rows)[-1]):
        r = rows[name]
        run = ds.where((ds.depth == r["depth"]) & (ds.width == r["width"]), drop=True).squeeze("net").sel(c=picks)
        lines += [{"da": run.loss / run.loss.isel(step=0), "ylabel": f"L_t / L_0\n{name}", "logy": True,
                   "ylim": (1e-2, 1e4)},
                  {"da": run.sharpness / run.sharpness.isel(step=0), "ylabel": f"lambda_t / lambda_0\n{name}",
                   "logy": True, "ylim": (1e-3, 1e2)}]
    paths.append(plot.panels(f"{out_dir}/trajectories.png", lines, hue="c",
                             title="smallest and largest d/w: the first steps (median over seeds, band min-max)"))
    return paths


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
