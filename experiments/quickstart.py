"""Quickstart: how far the input weights of a two-layer ReLU network move, vs width.

Luo et al. 2021 (JMLR 22(71), "Phase diagram for two-layer ReLU neural networks at
infinite-width limit"). f(x) = sum_k a_k relu(w_k x + b_k) is fitted to the three points
x = (-0.5, 0, 0.5), y = (-0.5, 0, 1) by full-batch GD until the loss is below `tol`.
Initialization a_k ~ N(0, beta1^2), (w_k, b_k) ~ N(0, beta2^2) with gamma' = 0, i.e.
beta1 = beta2 = m^(-gamma/2), mirrored (antisymmetric) so that f(x; theta_0) = 0.

The relative distance of the input weights RD = ||theta_w(t*) - theta_w(0)|| /
||theta_w(0)|| scales as m^S_w: S_w < 0 for gamma < 1 (linear regime: the wider, the
less the weights move) and S_w > 0 for gamma > 1 (condensed regime). The step size is
set per run from the NTK scale at init, lr = lr0 * min(1, m^(gamma - 1)).
"""
from __future__ import annotations

import sys

import jax.numpy as jnp

from engine import analysis, data, experiment, init, models, optim, plot, simulate, sweep
from engine.errors import FINITE, POSITIVE

NAME = "quickstart"
PRESETS = {
    "quick": {"gammas": [0.25, 0.5, 0.75, 1.25, 1.5, 1.75], "widths": [100, 200, 400, 800, 1600],
              "seeds": 8, "lr0": 0.5, "steps": 20000, "every": 500, "tol": 1e-6},
    "paper": {"gammas": [0.25, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0],
              "widths": [200, 400, 800, 1600, 3200, 6400, 12800],
              "seeds": 16, "lr0": 0.5, "steps": 200000, "every": 1000, "tol": 1e-7},
}
RANGES = {"gammas": FINITE, "lr0": POSITIVE, "tol": POSITIVE}


def build(width: int, config: dict) -> simulate.Simulation:
    model = models.mlp((1, width, 1), "relu", output_bias=False)
    lr = lambda hp: {"lr": config["lr0"] * jnp.minimum(1.0, jnp.power(float(width), hp["gamma"] - 1))}
    return simulate.simulation(
        model, data.luo_points(), "mse", optim.gd(), init.antisymmetric(model, init.luo(model)),
        steps=config["steps"], every=config["every"], probes=("loss", "relative_change_layer"),
        converge_below=config["tol"], derive=lr)


def run_sweep(config: dict, **options):
    return sweep.sweep(lambda width: build(width, config), grid={"gamma": config["gammas"]},
                       static={"width": config["widths"]}, seeds=config["seeds"],
                       **options)


def input_weight_rd(ds):
    """RD of the input layer (weights and bias) at t*: [seed, width, gamma]."""
    return ds.relative_change_layer.sel(layer="0").isel(step=-1).where(ds.converged)


def summarize(ds, config: dict) -> dict:
    slopes = analysis.log_log_slope(input_weight_rd(ds).median("seed"), "width")
    s_w = {f"{g:g}": round(float(s), 3) for g, s in zip(ds.gamma.values, slopes.values)}
    # Away from the critical line gamma = 1 the sign of S_w is the regime.
    verdicts = [(s < 0) == (g < 1) for g, s in zip(ds.gamma.values, slopes.values) if abs(g - 1) > 0.2]
    return {"slope_S_w": s_w, "converged_fraction": float(ds.converged.mean()),
            "diverged_runs": int(ds.diverged.sum()),
            "claims": {"S_w < 0 for gamma < 1, S_w > 0 for gamma > 1 (|gamma - 1| > 0.2)": bool(all(verdicts))}}


def figures(ds, config: dict, out_dir) -> list[str]:
    rd = input_weight_rd(ds)
    slopes = analysis.log_log_slope(rd.median("seed"), "width")
    notes = {g: f"S_w = {float(s):+.2f}" for g, s in zip(ds.gamma.values, slopes.values)}
    return [plot.lines(rd, "width", "gamma", f"{out_dir}/rd_vs_width.png", notes=notes,
                       logx=True, logy=True, ylabel="RD of input weights at t*",
                       title="Two-layer ReLU on 3 points: RD ~ m^S_w (Luo et al. 2021)")]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
