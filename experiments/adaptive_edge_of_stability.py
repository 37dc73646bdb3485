"""Adaptive edge of stability: full-batch Adam trains at preconditioned sharpness 38/eta.

Cohen, Kaur, Li, Kolter & Talwalkar 2022, "Adaptive Gradient Methods at the Edge of
Stability". Full-batch Adam with step size eta, momentum beta1 and preconditioner
P_t = diag(sqrt(v_hat_t) + eps) is stable on a quadratic with Hessian H only while the
preconditioned sharpness lambda_max(P_t^-1 H) < (2 + 2 beta1) / ((1 - beta1) eta)
(38/eta at beta1 = 0.9). During training lambda_max(P^-1 H) rises to that threshold and
hovers there -- the adaptive edge of stability -- while the raw sharpness
lambda_max(H) stays far below the threshold GD would have, and far below 38/eta.

Both are measured inside the compiled loop: lambda_max(P^-1 H) = lambda_max(P^-1/2 H
P^-1/2) by Lanczos with P read from Adam's state (`engine.optim.preconditioner`), and
lambda_max(H) likewise, every `every` steps. Loss: 1/n sum_i 1/2 ||f(x_i) - y_i||^2.

Quick preset: the 1-50-50-1 tanh network on chebyshev-3-20 of `edge_of_stability`,
eta in {0.001, 0.003} x beta1 in {0.8, 0.9, 0.95} (thresholds 6000 to 78000).
Paper preset: fc-tanh 3072-200-200-10 on the first 5000 CIFAR-10 images from the
user's .npz (`--set data=/path/cifar10.npz`); eta and beta1 as in their Figure 1 in
spirit (eta in {1e-4, 2e-4, 4e-4}, beta1 in {0.9}), stated here because we chose them.
"""
from __future__ import annotations

import sys

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import FRACTION, POSITIVE, UNIT, Range, require

NAME = "adaptive_edge_of_stability"
PRESETS = {
    "quick": {"data": "chebyshev-3-20", "n_train": None, "widths": [1, 50, 50, 1], "activation": "tanh",
              "lrs": [0.001, 0.003], "b1s": [0.8, 0.9, 0.95], "b2": 0.999, "eps": 1e-7, "seeds": 4,
              "steps": 3000, "every": 10, "late": 0.5},
    "paper": {"data": "cifar10.npz", "n_train": 5000, "widths": [3072, 200, 200, 10], "activation": "tanh",
              "lrs": [1e-4, 2e-4, 4e-4], "b1s": [0.9], "b2": 0.999, "eps": 1e-7, "seeds": 2,
              "steps": 20000, "every": 50, "late": 0.5},
}
RANGES = {"n_train": Range(1, integer=True, none_ok=True), "lrs": POSITIVE, "b1s": UNIT, "b2": UNIT,
          "eps": Range(0), "late": FRACTION}


def build(config: dict) -> simulate.Simulation:
    model = models.mlp(tuple(config["widths"]), config["activation"])
    d = data.named(config["data"], config["n_train"])
    require(d.x.shape[1] == config["widths"][0] and d.y.shape[1] == config["widths"][-1], "widths",
            f"the data have {d.x.shape[1]} inputs and {d.y.shape[1]} outputs, widths are {config['widths']}",
            f"use widths starting with {d.x.shape[1]} and ending with {d.y.shape[1]}")
    return simulate.simulation(
        model, d, "mse", optim.adam(b2=config["b2"], eps=config["eps"]), init.scaled(model),
        steps=config["steps"], every=config["every"],
        probes=("loss", probes.preconditioned_sharpness(iters=20, warm_iters=10),
                probes.sharpness(iters=20, warm_iters=10)))


def run_sweep(config: dict, **options):
    return sweep.sweep(build(config), grid={"lr": [float(x) for x in config["lrs"]],
                                            "b1": [float(x) for x in config["b1s"]]},
                       seeds=config["seeds"], **options)


def threshold(ds):
    """(2 + 2 b1) / ((1 - b1) lr) (`engine.optim.stability_threshold`): [lr, b1]."""
    return optim.stability_threshold(optim.adam(), {"lr": ds.lr, "b1": ds.b1})


def summarize(ds, config: dict) -> dict:
    late = analysis.late_phase(ds, config["late"])
    ratio = (late.preconditioned_sharpness / threshold(ds)).median("step")      # [seed, lr, b1]
    raw = (late.sharpness / threshold(ds)).median("step")
    within = abs(ratio - 1) <= 0.1
    cells = {}
    for lr in ds.lr.values:
        for b1 in ds.b1.values:
            sel = dict(lr=lr, b1=b1)
            cells[f"lr={lr:g},b1={b1:g}"] = {
                "threshold": round(float(threshold(ds).sel(sel)), 3),
                # the first measurement after step 0, where Adam's v is still zero
                "first_preconditioned_sharpness_over_threshold_median":
                    round(float((ds.preconditioned_sharpness.isel(step=1) / threshold(ds)).sel(sel).median()), 4),
                "late_preconditioned_sharpness_over_threshold_median": round(float(ratio.sel(sel).median()), 4),
                "fraction_of_seeds_within_10pct": round(float(within.sel(sel).mean()), 3),
                "late_raw_sharpness_over_threshold_median": round(float(raw.sel(sel).median()), 4),
                "final_loss_median": float(ds.loss.isel(step=-1).sel(sel).median()),
            }
    v = list(cells.values())
    claims = {
        "lambda_max(P^-1 H) starts far below the threshold (< 0.5x at the first measurement), every cell":
            all(x["first_preconditioned_sharpness_over_threshold_median"] < 0.5 for x in v),
        "late lambda_max(P^-1 H) within +-10% of (2 + 2 b1)/((1 - b1) eta) (median over seeds), every cell":
            all(abs(x["late_preconditioned_sharpness_over_threshold_median"] - 1) <= 0.1 for x in v),
        "raw sharpness stays far below that threshold (< 0.1x), every cell":
            all(x["late_raw_sharpness_over_threshold_median"] < 0.1 for x in v),
    }
    return {"cells": cells, "diverged_runs": int(ds.diverged.sum()), "claims": claims}


def figures(ds, config: dict, out_dir) -> list[str]:
    paths = []
    for b1 in ds.b1.values:
        sub = ds.sel(b1=b1)
        refs = {lr: float(threshold(ds).sel(lr=lr, b1=b1)) for lr in ds.lr.values}
        rows = [{"da": sub.loss, "ylabel": "train loss", "logy": True},
                {"da": sub.preconditioned_sharpness, "ylabel": "lambda_max(P^-1 H)\n(dashed: threshold)",
                 "refs": refs, "ylim": (0, 1.6 * max(refs.values()))},
                {"da": sub.sharpness, "ylabel": "lambda_max(H)", "logy": True}]
        title = (f"Full-batch Adam, b1 = {b1:g}: adaptive edge of stability (Cohen et al. 2022)\n"
                 f"median over {ds.sizes['seed']} seeds, band: min-max")
        paths.append(plot.panels(f"{out_dir}/adaptive_eos_b1_{b1:g}.png", rows, hue="lr", title=title))
    return paths


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
