"""Empirical phase diagram of three-layer ReLU networks: each layer has its own regime.

Zhou, Zhou, Jin, Luo, Zhang & Xu 2022, "Empirical Phase Diagram for Three-layer Neural
Networks with Infinite Width" (NeurIPS). f(x) = sum_k a_k relu(W2_k . h(x) + b2_k),
h(x) = relu(W1 x + b1), both hidden layers of width m, the last one mirrored
(antisymmetric) so that f(x; theta_0) = 0. Every weight and bias of layer l is drawn
from N(0, m^(-2 gamma_l)) (`engine.init.width_power(per_layer=True)`): gamma_0 (W1, b1,
"gamma_in"), gamma_1 (W2, b2, "gamma_mid"), gamma_2 (a, "gamma_out", held fixed). GD
on the three points of Luo et al. 2021 until the loss is below `tol`, each run with
lr = fraction * 2 / ||H||_2 re-measured every `every` steps (`engine.probes.step_size`).

For each hidden layer the relative change of its input weights (with bias) at t*,
RD(W_l) = ||W_l(t*) - W_l(0)|| / ||W_l(0)|| ~ m^S_l, gives a width slope S_l by least
squares, and the layer's regime: linear (S_l < 0), critical (S_l ~ 0), condensed
(S_l > 0). The claim: the regime of each layer is set by its own initialization scale,
so one network can hold a condensed layer next to a linear one.

Quick preset: gamma_0, gamma_1 in {0, 0.5, 1, 1.5}, gamma_2 = 1, widths 20-200, 2 seeds.
Measured there: W1 is linear at gamma_0 = 0, critical at 0.5, condensed from 1 on, for
every gamma_1; W2 is linear for gamma_1 <= 0.5, near critical at 1, condensed at 1.5, for
every gamma_0. Paper preset: a 0.25 grid to 2, widths 50-2000, more seeds. (Their
parameterization is through two normalized quantities of the gradient flow; ours uses the
per-layer exponents directly, our choice.)
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import FINITE, FRACTION, POSITIVE, Range

NAME = "phase_diagram_three_layer"
HIDDEN = {"0": "W1", "1": "W2"}
PRESETS = {
    "quick": {"gamma_in": [0.0, 0.5, 1.0, 1.5], "gamma_mid": [0.0, 0.5, 1.0, 1.5], "gamma_out": 1.0,
              "widths": [20, 40, 80, 200], "seeds": 2, "steps": 3000, "every": 10, "tol": 1e-5, "fraction": 0.1,
              "critical_band": 0.1, "margin": 0.2,
              # where each layer's regime is asserted (its own exponent only; near-critical values left out)
              "linear_at": {"0": [0.0], "1": [0.0, 0.5]}, "condensed_at": {"0": [1.0, 1.5], "1": [1.5]}},
}
RANGES = {"gamma_in": FINITE, "gamma_mid": FINITE, "gamma_out": FINITE, "tol": POSITIVE,
          "fraction": FRACTION, "critical_band": Range(0), "margin": Range(0)}
PRESETS["paper"] = {**PRESETS["quick"], "gamma_in": list(np.arange(0, 2.01, 0.25)), "seeds": 4, "steps": 20000,
                    "gamma_mid": list(np.arange(0, 2.01, 0.25)), "widths": [50, 100, 200, 500, 1000, 2000],
                    "linear_at": {"0": [0.0, 0.25], "1": [0.0, 0.25, 0.5]},
                    "condensed_at": {"0": [1.0, 1.25, 1.5, 1.75, 2.0], "1": [1.5, 1.75, 2.0]}}
OWN = {"0": "gamma_0", "1": "gamma_1"}  # the exponent of each hidden layer's own weights


def build(width: int, config: dict) -> simulate.Simulation:
    model = models.mlp((1, width, width, 1), "relu", output_bias=False)
    return simulate.simulation(
        model, data.luo_points(), "mse", optim.gd(), init.antisymmetric(model, init.width_power(model, per_layer=True)),
        steps=config["steps"], every=config["every"],
        probes=("loss", "relative_change_layer", probes.step_size(config["fraction"])), converge_below=config["tol"])


def run_sweep(config: dict, **options):
    grid = {"gamma_0": config["gamma_in"], "gamma_1": config["gamma_mid"], "gamma_2": [config["gamma_out"]]}
    return sweep.sweep(lambda width: build(width, config), grid=grid, static={"width": config["widths"]},
                       seeds=config["seeds"], **options)


def slopes(ds) -> xr.DataArray:
    """S_l of each hidden layer: slope of log median RD(W_l) at t* against log m,
    [layer, gamma_0, gamma_1]."""
    rd = ds.relative_change_layer.sel(layer=list(HIDDEN)).isel(step=-1, gamma_2=0).where(ds.converged.isel(gamma_2=0))
    return analysis.log_log_slope(rd.median("seed"), "width").transpose("layer", "gamma_0", "gamma_1")


def summarize(ds, config: dict) -> dict:
    s = slopes(ds)
    claims, m = {}, config["margin"]
    for layer, name in HIDDEN.items():
        own = s.sel(layer=layer)
        lin = own.sel({OWN[layer]: config["linear_at"][layer]})
        con = own.sel({OWN[layer]: config["condensed_at"][layer]})
        claims[f"{name} is linear (S < 0) wherever {OWN[layer]} is in {config['linear_at'][layer]} and condensed "
               f"(S > 0) wherever it is in {config['condensed_at'][layer]}, whatever the other layer's scale"] = bool(
            (lin < 0).all() and (con > 0).all())
    w1, w2 = s.sel(layer="0"), s.sel(layer="1")
    mixed = {"W1 condensed, W2 linear": (w1 > m) & (w2 < -m), "W1 linear, W2 condensed": (w1 < -m) & (w2 > m)}
    claims[f"one network can hold layers in different regimes: both mixes occur with |S| > {m}"] = bool(
        all(v.any() for v in mixed.values()))
    table = lambda da: analysis.grid_table(da, "gamma_0", "gamma_1")
    return {"slope_S_W1": table(w1), "slope_S_W2": table(w2),
            "mixed_regime_points": {k: [[float(a), float(b)] for a, b in zip(*[v.where(v, drop=True)[d].values
                                                                                 for d in ("gamma_0", "gamma_1")])]
                                    if v.any() else [] for k, v in ((k, v.stack(p=("gamma_0", "gamma_1")))
                                                                    for k, v in mixed.items())},
            "converged_fraction": round(float(ds.converged.mean()), 4), "diverged_runs": int(ds.diverged.sum()),
            "claims": claims}


def figures(ds, config: dict, out_dir) -> list[str]:
    s = slopes(ds)
    fig, axes = plot.figure(1, 3, (17, 4.8))
    for ax, (layer, name) in zip(axes, HIDDEN.items()):
        plot.value_map(ax, s.sel(layer=layer).T, "gamma_0", "gamma_1", f"S of {name}")
        ax.set_title(f"{name}: RD({name}) ~ m^S")
    regimes = analysis.regime_of_slope(s, config["critical_band"])
    pair = regimes.sel(layer="0").astype(object) + " / " + regimes.sel(layer="1").astype(object)
    kinds = tuple(sorted(set(pair.values.ravel())))
    plot.regime_map(axes[2], pair.T, kinds, "gamma_0", "gamma_1")
    axes[2].set_title(f"regime of W1 / W2 (|S| < {config['critical_band']}: critical)")
    fig.suptitle(f"Three-layer ReLU, per-layer init std m^-gamma_l (gamma_2 = {config['gamma_out']:g}), "
                 f"widths {config['widths']} (Zhou et al. 2022)")
    paths = [plot.save(fig, f"{out_dir}/phase_diagram_three_layer.png")]
    rd = ds.relative_change_layer.isel(step=-1, gamma_2=0).where(ds.converged.isel(gamma_2=0))
    for layer, name in HIDDEN.items():
        other = "gamma_1" if layer == "0" else "gamma_0"
        paths.append(plot.lines_grid(rd.sel(layer=layer), "width", OWN[layer], other, f"{out_dir}/rd_{name}.png",
                                     logx=True, logy=True, ylabel=f"RD({name}) at t*",
                                     title=f"RD({name}) vs width, one panel per {other}"))
    return paths


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
