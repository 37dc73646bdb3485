"""Adam on a highly degenerate polynomial: linear convergence, spikes or SignGD-like
oscillation, decided by (beta1, beta2).

Bai et al. 2026, "Towards Understanding Adam Convergence on Highly Degenerate
Polynomials". Loss L(x) = x^k / k for an even k >= 4, whose only minimum x = 0 has all
derivatives up to order k - 1 zero. Adam without eps and without bias correction,
    m_t = b1 m_{t-1} + (1 - b1) g_t,  v_t = b2 v_{t-1} + (1 - b2) g_t^2,
    x_{t+1} = x_t - eta m_t / sqrt(v_t),
converges LINEARLY when the squared gradient falls faster than v_t forgets: v_t then
decays like b2^t and x_{t+1}/x_t -> b2^(1/(2(k-2))). The normalized dynamics have a
fixed point iff b1 < b2^((k-1)/(2(k-2))) and it is stable iff b1 < b2^(k/(2(k-2))):
below the lower curve Adam converges linearly; between the curves it converges with
loss spikes; above the upper one it oscillates like sign descent without converging
linearly. GD and heavy-ball momentum decay only polynomially, |x_t| ~ t^(-1/(k-2)).

The (b1, b2) plane is one vmapped sweep (`adam_raw`, float64 because |x| reaches
1e-100 and v underflows float32). Each run is classified from the late half of its
trajectory of log|x| (recorded every `every` steps):
    stable      log|x| falls, and no record-to-record rise of |x| above `spike` (x10)
    spikes      log|x| falls overall, with at least one rise above `spike`
    oscillation log|x| does not fall: its least-squares slope per step is above
                `flat` times the stable rate
The measured rate is exp of that slope; in the stable regime it is compared with
b2^(1/(2(k-2))) through the exponents, |log r_measured / log r_theory - 1|.
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import BETA, FINITE, POSITIVE, UNIT, Range, require

NAME = "adam_degenerate_polynomials"
PRESETS = {
    "quick": {"k": 4, "x0": 1.0, "lr": 0.01, "b1s": list(np.round(np.linspace(0.0, 0.98, 15), 4)),
              "b2s": list(np.round(np.linspace(0.5, 0.995, 15), 4)), "steps": 20000, "every": 20,
              "gd_lrs": [0.01, 0.1], "momentum": 0.9, "flat": 0.2, "margin": 0.03,
              "example_b2": 0.99, "example_b1s": [0.9, 0.9905, 0.995], "example_steps": 40000},
}
RANGES = {"k": Range(4, integer=True), "x0": FINITE, "lr": POSITIVE, "b1s": UNIT, "b2s": UNIT, "gd_lrs": POSITIVE,
          "momentum": BETA, "flat": POSITIVE, "margin": Range(0), "example_b2": UNIT, "example_b1s": UNIT}
PRESETS["paper"] = {**PRESETS["quick"], "b1s": list(np.round(np.linspace(0.0, 0.995, 25), 4)),
                    "b2s": list(np.round(np.linspace(0.5, 0.999, 25), 4)), "steps": 100000, "every": 50,
                    "example_steps": 100000}
REGIMES = ("stable", "spikes", "oscillation")


def polynomial(k: int) -> tuple:
    """(model, data, loss) of L(x) = x^k / k for one scalar parameter x."""
    return models.scalar(), data.point(), (lambda pred, y: jnp.sum(pred ** k) / k)


def _simulation(config, optimizer, steps=None):
    model, d, loss = polynomial(config["k"])
    x_probe = probes.scalar("x", lambda s: s.params["x"][0])
    # a run whose loss is below 1e-200 (|x| ~ 1e-50) is done: freeze it before v underflows
    return simulate.simulation(model, d, loss, optimizer, init.point(config["x0"]), steps=steps or config["steps"],
                               every=config["every"], probes=("loss", x_probe), converge_below=1e-200)


def run_sweep(config: dict):
    require(config["k"] % 2 == 0, "k", f"got {config['k']!r}", "use an even degree k >= 4")
    with jax.enable_x64(True):
        adam = sweep.sweep(_simulation(config, optim.adam_raw(lr=config["lr"])),
                           grid={"b1": [float(b) for b in config["b1s"]], "b2": [float(b) for b in config["b2s"]]},
                           seeds=1, progress=config.get("progress"))
        plain = {name: sweep.sweep(_simulation(config, opt), grid={"lr": [float(v) for v in config["gd_lrs"]]},
                                   seeds=1, progress=False)
                 for name, opt in (("gd", optim.gd()), ("momentum", optim.momentum(momentum=config["momentum"])))}
        examples = sweep.sweep(_simulation(config, optim.adam_raw(lr=config["lr"]), config["example_steps"]),
                               grid={"b1": [float(b) for b in config["example_b1s"]],
                                     "b2": [float(config["example_b2"])]}, seeds=1, progress=False)
    out = adam.isel(seed=0, drop=True)
    out["example_x"] = examples.x.isel(seed=0, b2=0, drop=True).rename(b1="example_b1", step="example_step")
    return out.assign({f"{name}_x": ds.x.isel(seed=0, drop=True).rename(lr=f"{name}_lr") for name, ds in plain.items()})


def boundaries(b2, k: int) -> tuple:
    """(fixed point exists below, stable below): b2^((k-1)/(2(k-2))), b2^(k/(2(k-2)))."""
    return b2 ** ((k - 1) / (2 * (k - 2))), b2 ** (k / (2 * (k - 2)))


def theory_regime(b1, b2, k: int) -> str:
    exists, stable = boundaries(b2, k)
    return "stable" if b1 < stable else ("spikes" if b1 < exists else "oscillation")


TINY = 1e-45  # runs freeze once L < 1e-200, i.e. |x| ~ 1e-50: records below TINY are frozen


def _signature(x: np.ndarray, steps: np.ndarray, lr: float) -> np.ndarray:
    """[slope of log10|x| per step over the late half of the live records, whether
    |x| went 6 decades below the sign-descent scale lr, the largest rise of log10|x|
    above its running minimum (decades), whether the run froze at |x| ~ 1e-50]."""
    t, y = analysis.above_floor(x, steps, TINY)
    froze = t.size < steps.size
    if t.size < 8:
        return np.array([np.nan, float(froze), 0.0, float(froze)])
    late = slice(t.size // 2, None)
    slope = np.polyfit(t[late], y[late], 1)[0]
    skip = t.size // 10  # the first steps, before v has forgotten g_0^2
    deep = float(np.min(y[skip:]) < np.log10(lr) - 6)
    rise = float(np.max(y[skip:] - np.minimum.accumulate(y[skip:])))
    return np.array([slope, deep, rise, float(froze)])


def signature(x: xr.DataArray, lr: float) -> xr.Dataset:
    """`_signature` of every run of x [..., step] as named variables."""
    out = xr.apply_ufunc(_signature, x, x[x.dims[-1]], kwargs={"lr": lr}, input_core_dims=[[x.dims[-1]]] * 2,
                         output_core_dims=[["stat"]], vectorize=True)
    return xr.Dataset({name: out.isel(stat=i, drop=True) for i, name in
                       enumerate(("log10_rate", "deep", "max_rise_decades", "froze"))})


def classify(ds, config: dict, x=None) -> xr.DataArray:
    """Per run: 'stable' (froze, or still falling at the linear rate's order with no
    rise of 3 decades), 'spikes' (a phase of linear convergence far below the
    sign-descent scale, then a rise of more than 3 decades), else 'oscillation'."""
    sig = signature(ds.x if x is None else x, config["lr"])
    b2 = ds.b2 if x is None else config["example_b2"]
    theory = np.log10(b2) / (2 * (config["k"] - 2))
    falling = (sig.log10_rate < config["flat"] * theory) & (sig.max_rise_decades < 3)
    stable = (sig.froze > 0) | falling
    spikes = (sig.deep > 0) & (sig.max_rise_decades >= 3)
    return xr.where(stable, "stable", xr.where(spikes, "spikes", "oscillation"))


def baselines(ds) -> dict:
    """{"gd_lr=...": (steps, log10|x|)} of the GD and heavy-ball runs."""
    return {f"{name}_lr={lr:g}": analysis.above_floor(ds[f"{name}_x"].sel({f"{name}_lr": lr}).values,
                                                      ds.step.values, TINY)
            for name in ("gd", "momentum") for lr in ds[f"{name}_lr"].values}


def summarize(ds, config: dict) -> dict:
    k = config["k"]
    label = classify(ds, config)
    theory = xr.apply_ufunc(np.vectorize(lambda a, b: theory_regime(a, b, k)), ds.b1, ds.b2)
    exists, stable = boundaries(ds.b2, k)
    far = (abs(ds.b1 - stable) > config["margin"]) & (abs(ds.b1 - exists) > config["margin"])
    agree = (label == theory).where(far)
    rate = signature(ds.x, config["lr"]).log10_rate
    rate_error = abs(rate / (np.log10(ds.b2) / (2 * (k - 2))) - 1).where((label == "stable") & far & (theory == "stable"))
    poly = {key: round(float(np.polyfit(np.log10(t[t.size // 2:]), y[t.size // 2:], 1)[0]), 4)
            for key, (t, y) in baselines(ds).items()}
    counts = {r: int((label == r).sum()) for r in REGIMES}
    ex_label = classify(ds, config, ds.example_x)
    examples = {f"b1={b1:g},b2={config['example_b2']:g}": {
        "theory": theory_regime(b1, config["example_b2"], k), "measured": str(ex_label.sel(example_b1=b1).values)}
        for b1 in ds.example_b1.values}
    return {
        "points": int(label.size), "regime_counts": counts,
        "agreement_away_from_boundaries": round(float(agree.mean()), 4),
        "points_away_from_boundaries": int(far.sum()),
        "stable_rate_exponent_error_median": round(float(rate_error.median()), 5),
        "stable_rate_exponent_error_max": round(float(rate_error.max()), 5),
        "examples": examples, "polynomial_decay_exponents": poly, "polynomial_theory": round(-1 / (k - 2), 4),
        "claims": {
            "regimes agree with the theoretical boundaries away from them (>= 95% of points)":
                bool(float(agree.mean()) >= 0.95),
            "stable linear rate within 2% of b2^(1/(2(k-2))) (exponent, every stable point)":
                bool(float(rate_error.max()) <= 0.02),
            "GD and momentum decay like t^(-1/(k-2)) (log-log slope within 10%)":
                all(abs(s * (k - 2) + 1) <= 0.1 for s in poly.values()),
        },
    }


def figures(ds, config: dict, out_dir) -> list[str]:
    import matplotlib.pyplot as plt
    k = config["k"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    b2 = np.linspace(float(ds.b2.min()), float(ds.b2.max()), 200)
    exists, stable = boundaries(b2, k)
    plot.regime_map(ax, classify(ds, config), REGIMES, "b2", "b1", curves={
        f"stable below: b1 = b2^({k}/{2 * (k - 2)})": (b2, stable, "k-"),
        f"fixed point below: b1 = b2^({k - 1}/{2 * (k - 2)})": (b2, exists, "k--")})
    ax.set_title(f"Adam (no eps, no bias correction) on x^{k}/{k}")
    ex_label = classify(ds, config, ds.example_x)
    for b1 in ds.example_b1.values:
        x = ds.example_x.sel(example_b1=b1)
        t, y = analysis.above_floor(x.values, x.example_step.values, TINY)
        bx.plot(np.maximum(t, 1), 10 ** y, label=f"Adam b1={b1:g}, b2={config['example_b2']:g}: theory "
                f"{theory_regime(b1, config['example_b2'], k)}, measured {str(ex_label.sel(example_b1=b1).values)}")
    for key, (t, y) in baselines(ds).items():
        bx.plot(np.maximum(t, 1), 10 ** y, "--", label=f"{key}: ~ t^(-1/(k-2))")
    bx.set(xscale="log", yscale="log", xlabel="step", ylabel="|x_t|",
           title="Adam: linear, spikes or oscillation; GD, momentum: t^(-1/(k-2))")
    bx.legend(fontsize=7)
    bx.grid(alpha=0.3, which="both")
    return [plot.save(fig, f"{out_dir}/adam_phase_diagram.png")]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
