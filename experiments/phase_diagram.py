"""Phase diagram of two-layer ReLU networks in the initialization-scale plane.

Luo, Xu, Ma & Zhang 2021, "Phase diagram for two-layer ReLU neural networks at
infinite-width limit" (JMLR 22(71)). f(x) = sum_k a_k relu(w_k . x + b_k), width m,
a_k ~ N(0, beta1^2), (w_k, b_k) ~ N(0, beta2^2 I), mirrored (antisymmetric) so that
f(x; theta_0) = 0, with
    gamma  = -log(beta1 beta2) / log m,      gamma' = -log(beta1 / beta2) / log m.
Full-batch GD on the three points x = (-0.5, 0, 0.5), y = (-0.5, 0, 1) until the loss is
below `tol`. The relative distance of the input weights (with bias) at that time t*,
    RD(theta_w) = ||theta_w(t*) - theta_w(0)|| / ||theta_w(0)||  ~  m^S_w,
gives the slope S_w by least squares over widths, and the regime:
    linear     gamma < 1 or gamma' > gamma - 1         S_w < 0
    critical   gamma = 1, gamma' <= 0  or  gamma' = gamma - 1, gamma >= 1      S_w ~ 0
    condensed  gamma > 1 and gamma' < gamma - 1        S_w > 0.

Step size: each run takes lr = fraction * 2 / ||H||_2 with ||H||_2 = max |lambda(H)|,
re-measured every `every` steps (`engine.probes.step_size`). This replaces the
learning-rate halving retries of the paper's scripts: the NTK scale differs by many
orders of magnitude across the plane, and a small initialization starts at a saddle
whose negative curvature sets how fast the weights may grow.

Computed in float64: RD ranges from 1e-9 (wide networks deep in the linear regime)
to 1e3, and float32 would round the low end. Quick preset: gamma 0.25..2.25 x gamma' -0.5..1 in steps of 0.25 (63 points, 7 on the
boundary), widths 100-1000, 2 seeds. Paper preset: a finer plane, widths 100-10000,
more seeds (the paper's exact grid and learning rates are not stated; ours are our choice).
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import FINITE, FRACTION, POSITIVE, Range

NAME = "phase_diagram"
REGIMES = ("linear", "critical", "condensed")
PRESETS = {
    "quick": {"gammas": list(np.arange(0.25, 2.26, 0.25).round(3)),
              "gamma_primes": list(np.arange(-0.5, 1.01, 0.25).round(3)),
              "widths": [100, 200, 500, 1000], "seeds": 2, "steps": 10000, "every": 10, "tol": 1e-5,
              "fraction": 0.1, "critical_band": 0.1, "away": 0.15},
    "paper": {"gammas": list(np.arange(0.0, 3.01, 0.125).round(4)),
              "gamma_primes": list(np.arange(-1.0, 1.51, 0.125).round(4)),
              "widths": [100, 200, 500, 1000, 2000, 5000, 10000], "seeds": 8, "steps": 50000, "every": 10,
              "tol": 1e-6, "fraction": 0.1, "critical_band": 0.1, "away": 0.15},
}
RANGES = {"gammas": FINITE, "gamma_primes": FINITE, "tol": POSITIVE, "fraction": FRACTION,
          "critical_band": Range(0), "away": Range(0)}


def build(width: int, config: dict) -> simulate.Simulation:
    model = models.mlp((1, width, 1), "relu", output_bias=False)
    return simulate.simulation(
        model, data.luo_points(), "mse", optim.gd(), init.antisymmetric(model, init.luo(model)),
        steps=config["steps"], every=config["every"], converge_below=config["tol"],
        probes=("loss", "relative_change_layer", probes.step_size(config["fraction"])))


def run_sweep(config: dict, **options):
    # float64: RD spans 1e-9 (wide, linear) to 1e3 (condensed), and float32 rounds the low end
    return sweep.sweep(lambda width: build(width, config),
                       grid={"gamma": config["gammas"], "gamma_prime": config["gamma_primes"]},
                       static={"width": config["widths"]}, seeds=config["seeds"], x64=True, **options)


def theory_regime(gamma: float, gamma_prime: float, eps: float = 1e-9) -> str:
    if gamma < 1 - eps or gamma_prime > gamma - 1 + eps:
        return "linear"
    if gamma > 1 + eps and gamma_prime < gamma - 1 - eps:
        return "condensed"
    return "critical"


def boundary_distance(gamma: float, gamma_prime: float) -> float:
    """Euclidean distance in the plane to the critical set {gamma = 1, gamma' <= 0} U
    {gamma' = gamma - 1, gamma >= 1}."""
    g, gp = gamma - 1.0, gamma_prime
    to_vertical = abs(g) if gp <= 0 else np.hypot(g, gp)
    s = (g + gp) / 2  # foot of the perpendicular on gamma' = gamma - 1, measured along it
    to_diagonal = abs(gp - g) / np.sqrt(2) if s >= 0 else np.hypot(g, gp)
    return float(min(to_vertical, to_diagonal))


def input_weight_rd(ds) -> xr.DataArray:
    """RD of the input layer (weights and bias) at t*: [seed, width, gamma, gamma_prime];
    NaN for runs that did not reach the loss tolerance."""
    return ds.relative_change_layer.sel(layer="0").isel(step=-1).where(ds.converged)


def slopes(ds) -> xr.DataArray:
    """S_w: least-squares slope of log median RD against log m, [gamma, gamma_prime]."""
    return analysis.log_log_slope(input_weight_rd(ds).median("seed"), "width")


def summarize(ds, config: dict) -> dict:
    s_w = slopes(ds)
    theory = analysis.grid_of(theory_regime, gamma=ds.gamma, gamma_prime=ds.gamma_prime)
    distance = analysis.grid_of(boundary_distance, gamma=ds.gamma, gamma_prime=ds.gamma_prime)
    on = theory == "critical"
    away = ~on & (distance >= config["away"])
    sign_ok = xr.where(theory == "linear", s_w < 0, s_w > 0)
    agree3 = analysis.regime_of_slope(s_w, config["critical_band"]) == theory
    crossed = analysis.sign_change_across(s_w, on)
    return {
        "slope_S_w": analysis.grid_table(s_w, "gamma", "gamma_prime"),
        "points_away_from_boundary": int(away.sum()), "points_on_boundary": int(on.sum()),
        "sign_agrees_away_from_boundary": int((sign_ok & away).sum()),
        "max_abs_S_w_on_boundary": round(float(abs(s_w).where(on).max()), 3),
        "min_abs_S_w_away_from_boundary": round(float(abs(s_w).where(away).min()), 3),
        "three_regime_agreement": round(float(agree3.mean()), 3),
        "boundary_points_where_S_w_crosses_zero": sum(crossed),
        "converged_fraction": round(float(ds.converged.mean()), 4), "diverged_runs": int(ds.diverged.sum()),
        "median_steps_to_tol": float(ds.converged_step.where(ds.converged).median()),
        "claims": {
            f"away from the boundary (distance >= {config['away']}) S_w < 0 in the linear and > 0 in the "
            "condensed regime": bool((sign_ok | ~away).all()),
            "S_w changes sign across the boundary and |S_w| on it is below its off-boundary neighbours'":
                bool(crossed) and all(crossed),
        },
    }


def boundary_curves(ds) -> dict:
    g_max, gp_min = float(ds.gamma.max()), float(ds.gamma_prime.min())
    return {"theory: gamma = 1": ([1, 1], [gp_min - 1, 0], "k-"),
            "theory: gamma' = gamma - 1": ([1, g_max + 1], [0, g_max], "k--")}


def figures(ds, config: dict, out_dir) -> list[str]:
    s_w = slopes(ds)
    fig, axes = plot.figure(1, 2, (13, 5.2))
    plot.value_map(axes[0], s_w, "gamma", "gamma_prime", "S_w (slope of log RD vs log m)", boundary_curves(ds))
    plot.regime_map(axes[1], analysis.regime_of_slope(s_w, config["critical_band"]), REGIMES, "gamma", "gamma_prime",
                    boundary_curves(ds))
    axes[0].set_title(f"S_w over widths {config['widths']}, {ds.sizes['seed']} seeds")
    axes[1].set_title(f"measured regime (|S_w| < {config['critical_band']}: critical) vs theory")
    fig.suptitle("Two-layer ReLU phase diagram (Luo et al. 2021): RD(theta_w) ~ m^S_w")
    paths = [plot.save(fig, f"{out_dir}/phase_diagram.png")]
    paths.append(plot.lines_grid(input_weight_rd(ds), "width", "gamma", "gamma_prime", f"{out_dir}/rd_vs_width.png",
                                 logx=True, logy=True, ylabel="RD(theta_w) at t*",
                                 title="RD of the input weights vs width m, one panel per gamma'"))
    return paths


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
