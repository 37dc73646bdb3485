"""The catapult phase: wide networks trained with a step size above 2/lambda_0.

Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020, "The large learning rate phase
of deep learning: the catapult mechanism". A wide two-layer network in the NTK
parameterization, f(x) = W2 relu(W1 x / sqrt(d) + b1) / sqrt(m) + b2 with N(0, 1)
weights, and the two-layer linear "uv model" f(x) = v^T u x / sqrt(m) on the single
example (x, y) = (1, 0), are trained by full-batch GD on L = 1/n sum_i 1/2 ||f(x_i) - y_i||^2. With lambda_0 the top
eigenvalue of the NTK (of L's Hessian at initialization, which equals it up to
O(1/sqrt(m)) in a wide network):
    eta lambda_0 < 2        lazy: the loss falls monotonically, the curvature stays put;
    2 < eta lambda_0 < c    catapult: the loss first grows by orders of magnitude, the
                            curvature falls until eta lambda < 2, then training converges;
    eta lambda_0 > c        divergence.
They find c = 4 for the two-layer linear (uv) model and c ~ 12 for ReLU networks.

lambda_0 is measured in each run (sharpness at step 0, Lanczos), so each run's
eta lambda_0 is exact; the grid of learning rates is eta = target / median(lambda_0),
the median over seeds taken from a one-step pilot sweep.

Quick preset: width 1024 on the first 64 digits (64 pixels, one-hot targets), records
every 3 steps; paper preset: width 8192 on 512 digits (their MNIST/CIFAR subsets are not shipped; any .npz
can be passed with --set data=PATH).
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import COUNT, POSITIVE, require

NAME = "catapult"
KINDS = ("relu", "uv")
CATAPULT_BANDS = {"relu": (2.3, 2.9), "uv": (2.3, 3.7)}  # eta lambda_0 strictly inside (2, c)
PRESETS = {
    "quick": {"data": "digits", "n_train": 64, "width": 1024, "seeds": 2, "steps": 300, "every": 3,
              "targets": [0.5, 1.0, 1.5, 1.9, 2.2, 2.4, 2.6, 2.8, 3.0, 3.5, 3.8, 4.2, 6.0, 12.0],
              "models": ["relu", "uv"]},
    "paper": {"data": "digits", "n_train": 512, "width": 8192, "seeds": 4, "steps": 1000, "every": 2,
              "targets": list(np.round(np.linspace(0.25, 16.0, 64), 3)), "models": ["relu", "uv"]},
}
RANGES = {"n_train": COUNT, "targets": POSITIVE}


def training_data(config: dict, kind: str):
    if kind == "uv":  # the uv model's single example (x, y) = (1, 0)
        return data.point(1.0, 0.0)
    return data.named(config["data"], config["n_train"])


def build(config: dict, kind: str, steps: int | None = None, every: int | None = None) -> simulate.Simulation:
    """kind "relu": f = W2 relu(W1 x / sqrt(d)) / sqrt(m); "uv": f = v^T u x / sqrt(m)."""
    require(kind in KINDS, "models", f"unknown model {kind!r}", f"use some of {', '.join(KINDS)}")
    d = training_data(config, kind)
    model = models.mlp((d.x.shape[1], config["width"], d.y.shape[1]), "relu" if kind == "relu" else "linear",
                       bias=kind == "relu", parameterization="ntk")
    sharp = probes.sharpness(iters=20, warm_iters=10)
    # a loss 1e10 times the ~0.5 it starts at does not come back: flag it as diverged
    return simulate.simulation(model, d, "mse", optim.gd(), init.scaled(model), steps=steps or config["steps"],
                               every=every or config["every"], probes=("loss", sharp), diverge_above=1e10)


def sweep_model(config: dict, kind: str, **options) -> xr.Dataset:
    """One model's sweep over eta = target / median(lambda_0), indexed by `target`
    (`lr` is kept as a variable along it)."""
    pilot = sweep.sweep(build(config, kind, steps=1, every=1), grid={"lr": [1e-9]}, seeds=config["seeds"],
                        name=f"{kind}_pilot", **options)
    lambda0 = float(pilot.sharpness.isel(step=0).median())
    ds = sweep.sweep(build(config, kind), grid={"lr": [t / lambda0 for t in config["targets"]]},
                     seeds=config["seeds"], name=kind, **options)
    ds = ds.assign_coords(target=("lr", [float(t) for t in config["targets"]])).swap_dims(lr="target")
    return ds.reset_coords("lr")


def run_sweep(config: dict, **options):
    require(isinstance(config["models"], list) and len(config["models"]) >= 1, "models",
            f"got {config['models']!r}", f"give a list of models among {', '.join(KINDS)}")
    parts = [sweep_model(config, kind, **options) for kind in config["models"]]
    return xr.concat(parts, dim=xr.DataArray(config["models"], dims="model", name="model"),
                     combine_attrs="override")


def measures(ds):
    """Per run of one model: eta lambda_0, peak loss / initial loss, eta * final
    sharpness, final loss."""
    initial = ds.loss.isel(step=0)
    out = {
        "eta_lambda0": ds.lr * ds.sharpness.isel(step=0),
        "peak_over_initial_loss": ds.loss.max("step") / initial,
        "eta_final_sharpness": ds.lr * ds.sharpness.isel(step=-1),
        "final_over_initial_loss": ds.loss.isel(step=-1) / initial,
    }
    return {k: v.transpose(*ds.diverged.dims) for k, v in out.items()}


def _rows(ds, kind) -> dict:
    m = measures(ds.sel(model=kind))
    dead = ds.diverged.sel(model=kind)
    return {f"{t:g}": {k: round(float(v.sel(target=t).median()), 4) for k, v in m.items()}
            | {"diverged_fraction": round(float(dead.sel(target=t).mean()), 3)} for t in ds.target.values}


def summarize(ds, config: dict) -> dict:
    out, claims = {}, {}
    for kind in ds.model.values:
        rows = _rows(ds, kind)
        lo, hi = CATAPULT_BANDS[kind]
        lazy = [r for t, r in rows.items() if float(t) < 1.8]
        catapult = [r for t, r in rows.items() if lo <= float(t) <= hi]
        converged = [float(t) for t, r in rows.items()
                     if r["diverged_fraction"] == 0 and r["final_over_initial_loss"] < 1]
        diverged = [float(t) for t, r in rows.items() if r["diverged_fraction"] == 1]
        out[kind] = {"lambda0_median": round(float(ds.sharpness.sel(model=kind).isel(step=0).median()), 4),
                     "per_target": rows,
                     "largest_eta_lambda0_that_converged": max(converged) if converged else None,
                     "smallest_eta_lambda0_that_diverged": min(diverged) if diverged else None}
        claims[f"{kind}: lazy (eta lambda_0 < 1.8): the loss never rises (peak <= 1.01 x initial)"] = \
            all(r["peak_over_initial_loss"] <= 1.01 for r in lazy)
        claims[f"{kind}: catapult ({lo} <= eta lambda_0 <= {hi}): the loss rises > 10x, then eta lambda falls "
               "to 2 or below and training converges (final loss < initial)"] = bool(catapult) and all(
            r["peak_over_initial_loss"] > 10 and r["eta_final_sharpness"] < 2.02
            and r["final_over_initial_loss"] < 1 and r["diverged_fraction"] == 0 for r in catapult)
        claims[f"{kind}: large enough eta lambda_0 diverges"] = bool(diverged)
    if "uv" in out:
        first = out["uv"]["smallest_eta_lambda0_that_diverged"]
        claims["uv: divergence sets in at eta lambda_0 = 4 (first diverging target in [3.8, 4.5])"] = \
            first is not None and 3.8 <= first <= 4.5
    return {"models": out, "claims": claims}


def figures(ds, config: dict, out_dir) -> list[str]:
    groups = {"ReLU (digits)" if kind == "relu" else "uv model (one example)":
              {**{k: v.values for k, v in measures(ds.sel(model=kind)).items()},
               "alive": ~ds.diverged.sel(model=kind).values, "marker": "o" if kind == "relu" else "s",
               "mfc": "none" if kind == "uv" else None} for kind in ds.model.values}
    panels = [{"key": "peak_over_initial_loss", "ylabel": "peak loss / initial loss", "logy": True,
               "title": "how far the loss is catapulted", "mark_dead": True},
              {"key": "eta_final_sharpness", "ylabel": "eta * final sharpness",
               "title": "curvature at the end of training", "hlines": {"2 (stability of GD)": (2, "--")},
               "lines": {"eta lambda_final = eta lambda_0": ([0, 2], [0, 2], "k:")}}]
    return [plot.outcome_scatter(f"{out_dir}/catapult.png", groups, panels, x="eta_lambda0", xlabel="eta * lambda_0",
                                 vlines=((2, "-"), (4, ":")),
                                 title=f"Wide two-layer networks (NTK parameterization, width {config['width']}), "
                                       "full-batch GD: catapult (Lewkowycz et al. 2020)")]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
