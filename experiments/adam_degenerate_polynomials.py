"""Adam on a highly degenerate polynomial: linear convergence, spikes or SignGD-like
oscillation, decided by (beta1, beta2).

Bai et al. 2026, "Towards Understanding Adam Convergence on Highly Degenerate
Polynomials". Loss L(x) = x^k / k for an even k >= 4 (all derivatives up to order k - 1
vanish at the minimum x = 0). Adam without eps and without bias correction,
    m_t = b1 m_{t-1} + (1 - b1) g_t,  v_t = b2 v_{t-1} + (1 - b2) g_t^2,  x_{t+1} = x_t - eta m_t / sqrt(v_t),
converges LINEARLY when the squared gradient falls faster than v_t forgets: v_t then
decays like b2^t and x_{t+1}/x_t -> b2^(1/(2(k-2))). The normalized dynamics have a
fixed point iff b1 < b2^((k-1)/(2(k-2))) and it is stable iff b1 < b2^(k/(2(k-2))):
below the lower curve Adam converges linearly; between the curves it converges with
loss spikes; above the upper one it oscillates like sign descent. GD and heavy-ball
momentum decay only polynomially, |x_t| ~ t^(-1/(k-2)).

The (b1, b2) plane is one vmapped sweep (`adam_raw`, float64 because |x| reaches
1e-100 and v underflows float32). Each run is classified from its trajectory of
log10|x| (recorded every `every` steps; `engine.analysis.decay_signature`):
    stable      it froze at |x| ~ 1e-50, or over its late half log|x| falls faster than
                `flat` times the linear rate, with no rise of 3 decades after the start
    spikes      otherwise, if |x| went 6 decades below the sign-descent scale lr and
                rose again by 3 decades or more
    oscillation the rest: log|x| does not keep falling.
Stable runs' late-half rate r is compared with b2^(1/(2(k-2))) by its exponent.
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, losses, models, optim, plot, probes, simulate, sweep
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
TINY = 1e-45  # runs freeze once L < 1e-200 (|x| ~ 1e-50, before v underflows): below TINY is frozen


def _simulation(config, optimizer=None, steps=None):
    optimizer = optimizer or optim.adam_raw(lr=config["lr"])  # the paper's Adam: no eps, no bias correction
    return simulate.simulation(models.scalar(), data.point(), losses.power(config["k"]), optimizer,
                               init.point(config["x0"]), steps=steps or config["steps"], every=config["every"],
                               probes=("loss", probes.scalar("x", lambda s: s.params["x"][0])), converge_below=1e-200)


def run_sweep(config: dict, **options):
    require(config["k"] % 2 == 0, "k", f"got {config['k']!r}", "use an even degree k >= 4")
    options = {**options, "seeds": 1, "x64": True}
    out = sweep.sweep(_simulation(config), grid={"b1": config["b1s"], "b2": config["b2s"]}, name="adam",
                      **options).isel(seed=0, drop=True)
    examples = sweep.sweep(_simulation(config, steps=config["example_steps"]), name="examples", **options,
                           grid={"b1": config["example_b1s"], "b2": [config["example_b2"]]})
    out["example_x"] = examples.x.isel(seed=0, b2=0, drop=True).rename(b1="example_b1", step="example_step")
    for name, opt in (("gd", optim.gd()), ("momentum", optim.momentum(momentum=config["momentum"]))):
        plain = sweep.sweep(_simulation(config, opt), grid={"lr": config["gd_lrs"]}, name=name, **options)
        out[f"{name}_x"] = plain.x.isel(seed=0, drop=True).rename(lr=f"{name}_lr")
    return out


def boundaries(b2, k: int) -> tuple:
    """(fixed point exists below, stable below): b2^((k-1)/(2(k-2))), b2^(k/(2(k-2)))."""
    return b2 ** ((k - 1) / (2 * (k - 2))), b2 ** (k / (2 * (k - 2)))


def theory_regime(b1, b2, k: int):
    exists, stable = boundaries(b2, k)  # numbers or DataArrays
    return xr.where(b1 < stable, "stable", xr.where(b1 < exists, "spikes", "oscillation"))


def regimes(x: xr.DataArray, b2, config: dict) -> xr.Dataset:
    """`engine.analysis.decay_signature` of each run of x [..., step], its `regime` (module
    docstring) and the error of its rate's exponent, |log r / log b2^(1/(2(k-2))) - 1|."""
    sig = analysis.decay_signature(x, TINY, np.log10(config["lr"]) - 6)
    linear = np.log10(b2) / (2 * (config["k"] - 2))
    stable = (sig.froze > 0) | ((sig.log10_rate < config["flat"] * linear) & (sig.max_rise_decades < 3))
    spikes = (sig.deep > 0) & (sig.max_rise_decades >= 3)
    return sig.assign(regime=xr.where(stable, "stable", xr.where(spikes, "spikes", "oscillation")),
                      rate_error=abs(sig.log10_rate / linear - 1))


def examples(ds, config: dict) -> dict:
    """{b1: {"theory": regime, "measured": regime}} of the long example runs at example_b2."""
    label = regimes(ds.example_x, config["example_b2"], config).regime
    return {float(b1): {"theory": str(theory_regime(b1, config["example_b2"], config["k"])),
                        "measured": str(label.sel(example_b1=b1).values)} for b1 in ds.example_b1.values}


def baselines(ds) -> dict:
    """{"gd_lr=...": (steps, log10|x|)} of the GD and heavy-ball runs."""
    return {f"{n}_lr={lr:g}": analysis.above_floor(ds[f"{n}_x"].sel({f"{n}_lr": lr}).values, ds.step.values, TINY)
            for n in ("gd", "momentum") for lr in ds[f"{n}_lr"].values}


def summarize(ds, config: dict) -> dict:
    k = config["k"]
    sig = regimes(ds.x, ds.b2, config)
    label, theory = sig.regime, theory_regime(ds.b1, ds.b2, k)
    far = np.minimum(*(abs(ds.b1 - b) for b in boundaries(ds.b2, k))) > config["margin"]
    agree = (label == theory).where(far)
    rate_error = sig.rate_error.where((label == "stable") & far & (theory == "stable"))
    poly = {key: round(analysis.late_slope(t, y, log_t=True), 4) for key, (t, y) in baselines(ds).items()}
    return {
        "points": int(label.size), "regime_counts": {r: int((label == r).sum()) for r in REGIMES},
        "agreement_away_from_boundaries": round(float(agree.mean()), 4), "points_away_from_boundaries": int(far.sum()),
        **{f"stable_rate_exponent_error_{f}": round(float(getattr(rate_error, f)()), 5) for f in ("median", "max")},
        "examples": {f"b1={b1:g},b2={config['example_b2']:g}": e for b1, e in examples(ds, config).items()},
        "polynomial_decay_exponents": poly, "polynomial_theory": round(-1 / (k - 2), 4),
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
    k = config["k"]
    fig, (ax, bx) = plot.figure(1, 2, (12, 4.6))
    b2 = np.linspace(float(ds.b2.min()), float(ds.b2.max()), 200)
    exists, stable = boundaries(b2, k)
    plot.regime_map(ax, regimes(ds.x, ds.b2, config).regime, REGIMES, "b2", "b1", curves={
        f"stable below: b1 = b2^({k}/{2 * (k - 2)})": (b2, stable, "k-"),
        f"fixed point below: b1 = b2^({k - 1}/{2 * (k - 2)})": (b2, exists, "k--")})
    ax.set_title(f"Adam (no eps, no bias correction) on x^{k}/{k}")
    traces = {f"Adam b1={b1:g}, b2={config['example_b2']:g}: theory {e['theory']}, measured {e['measured']}":
              (*analysis.above_floor(ds.example_x.sel(example_b1=b1).values, ds.example_step.values, TINY), "-")
              for b1, e in examples(ds, config).items()}
    traces |= {f"{key}: ~ t^(-1/(k-2))": (t, y, "--") for key, (t, y) in baselines(ds).items()}
    plot.decades(bx, traces, xlabel="step", ylabel="|x_t|",
                 title="Adam: linear, spikes or oscillation; GD, momentum: t^(-1/(k-2))")
    return [plot.save(fig, f"{out_dir}/adam_phase_diagram.png")]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
