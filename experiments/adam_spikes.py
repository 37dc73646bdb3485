"""Adam's loss spikes come from its preconditioner: v_t decays, lambda_max(P^-1 H)
crosses the stability threshold, and a spike starts when the curvature along the
update direction crosses it too.

Bai et al. 2025, "Adaptive Preconditioners Trigger Loss Spikes in Adam". Full-batch
Adam (b1, b2, eps, bias-corrected) with P_t = (1 - b1^t)(sqrt(v_hat_t) + eps) is stable
on a quadratic only while lambda_max(P^-1 H) < (2 + 2 b1) / ((1 - b1) eta) (38/eta at
b1 = 0.9). Late in training the squared gradients fall far below v_t, so v_t decays like
b2^k and P^-1 H grows until it exceeds the threshold for a sustained period; a spike
begins once the preconditioned curvature along the gradient, (d^T H d) / (d^T P d) with
d = P^-1 g, exceeds it too. The spike refreshes v, the curvature falls back, and
training resumes.

Two settings, both one sweep each:
  network    a 1-64-64-1 tanh MLP fitting sin x + sin 4x on 64 points of [-pi, pi]
             (MSE), over b2 and eps; lambda_max(P^-1 H) (Lanczos) and the
             preconditioned directional curvature every `every` steps;
  quadratic  L(x) = x^2 / 2 for one parameter, where P^-1 H = 1/P exactly, over b2:
             the decay rate of v and the spikes it triggers.

Spikes are found automatically: a record whose loss exceeds `spike` (100) times the
lowest loss so far starts one; its peak is the highest loss before the loss falls
back below that level, its onset the last record before the peak at which the loss
was within 2x of the running minimum. Per spike the summary gives the step at which
lambda_max(P^-1 H) last crossed the threshold before the peak, the step at which the
directional curvature first crossed it after that, and the onset and peak steps. With
records every 10 steps (quick preset) the order threshold -> curvature -> peak is
resolved to 10 steps; the network hovers near the threshold (the adaptive edge of
stability), so "the last crossing" is usually 10-20 steps before the peak, and the long
sustained excursion the paper describes is seen cleanly in the quadratic, where
P^-1 H = 1/P rises steadily as v decays.
"""
from __future__ import annotations

import sys

import jax
import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import POSITIVE, UNIT, Range, require
from experiments.adam_degenerate_polynomials import polynomial

NAME = "adam_spikes"
PRESETS = {
    "quick": {"widths": [1, 64, 64, 1], "n": 64, "lr": 0.001, "b1": 0.9, "b2s": [0.9, 0.95, 0.99, 0.999],
              "epss": [1e-8, 0.1], "seeds": 3, "steps": 10000, "every": 10, "spike": 100.0,
              "quadratic_lr": 0.01, "quadratic_b2s": [0.99, 0.995, 0.999], "quadratic_steps": 30000,
              "quadratic_every": 5},
}
RANGES = {"lr": POSITIVE, "b1": UNIT, "b2s": UNIT, "epss": Range(0), "spike": Range(1, lo_open=True),
          "quadratic_lr": POSITIVE, "quadratic_b2s": UNIT}
PRESETS["paper"] = {**PRESETS["quick"], "widths": [1, 256, 256, 1], "n": 256, "epss": [1e-8, 1e-4, 0.1],
                    "seeds": 8, "steps": 50000, "every": 5, "quadratic_steps": 60000}


def network(config) -> simulate.Simulation:
    model = models.mlp(tuple(config["widths"]), "tanh")
    return simulate.simulation(
        model, data.sines((1, 4), config["n"]), "mse", optim.adam(lr=config["lr"], b1=config["b1"]),
        init.scaled(model), steps=config["steps"], every=config["every"],
        probes=("loss", "preconditioned_sharpness", "preconditioned_directional_curvature"))


def quadratic(config) -> simulate.Simulation:
    model, d, loss = polynomial(2)
    return simulate.simulation(
        model, d, loss, optim.adam(lr=config["quadratic_lr"], b1=config["b1"]), init.point(1.0),
        steps=config["quadratic_steps"], every=config["quadratic_every"],
        probes=("loss", probes.scalar("preconditioner", lambda s: optim.preconditioner(s.opt_state, s.hparams)["x"][0]),
                probes.scalar("grad_sq", lambda s: s.params["x"][0] ** 2)))  # g = x for x^2/2


def run_sweep(config: dict):
    require(len(config["b2s"]) >= 2, "b2s", f"got {config['b2s']!r}", "give at least two values of b2 to compare")
    net = sweep.sweep(network(config), grid={"b2": [float(b) for b in config["b2s"]],
                                             "eps": [float(e) for e in config["epss"]]},
                      seeds=config["seeds"], progress=config.get("progress"))
    with jax.enable_x64(True):  # v reaches 1e-12 and below
        quad = sweep.sweep(quadratic(config), grid={"b2": [float(b) for b in config["quadratic_b2s"]]},
                           seeds=1, progress=False)
    quad = quad.isel(seed=0, drop=True).rename(b2="quadratic_b2", step="quadratic_step")
    return net.assign({f"quadratic_{name}": quad[name] for name in ("loss", "preconditioner", "grad_sq")})


def threshold(b1: float, lr: float) -> float:
    """(2 + 2 b1) / ((1 - b1) lr), `engine.optim.stability_threshold` of Adam."""
    return optim.stability_threshold(optim.adam(), {"lr": lr, "b1": b1})


def network_spikes(ds, config) -> dict:
    """{(b2, eps, seed): [spikes]}."""
    thr = threshold(config["b1"], config["lr"])
    found = {}
    for b2 in ds.b2.values:
        for eps in ds.eps.values:
            for seed in ds.seed.values:
                r = ds.sel(b2=b2, eps=eps, seed=seed)
                found[(float(b2), float(eps), int(seed))] = analysis.spikes(
                    r.loss.values, ds.step.values, config["spike"], r.preconditioned_sharpness.values,
                    r.preconditioned_directional_curvature.values, thr)
    return found


def v_decay(ds, config) -> dict:
    """Per quadratic b2: the fitted decay rate of v = (P / (1 - b1^t) - eps)^2 per step over
    the records where g^2 < 1e-3 v, against b2 (their ratio of logs)."""
    out = {}
    for b2 in ds.quadratic_b2.values:
        r = ds.sel(quadratic_b2=b2)
        t = ds.quadratic_step.values.astype(float)
        corr = 1 - config["b1"] ** np.maximum(t, 1)
        v_hat = (r.quadratic_preconditioner.values / corr - 1e-8) ** 2
        v = v_hat * (1 - b2 ** np.maximum(t, 1))
        quiet = (r.quadratic_grad_sq.values < 1e-3 * v) & (t > 0) & (v > 0)
        fit = analysis.slope_on_longest_run(t, np.log(np.where(v > 0, v, 1.0)), quiet)
        out[f"{b2:g}"] = None if fit is None else {"log_v_slope_over_log_b2": round(float(fit[0] / np.log(b2)), 4),
                                                   "quiet_steps": int(fit[1])}
    return out


def summarize(ds, config: dict) -> dict:
    found = network_spikes(ds, config)
    counts = {f"b2={b2:g},eps={eps:g}": sum(len(found[(float(b2), float(eps), int(s))]) for s in ds.seed.values)
              for b2 in ds.b2.values for eps in ds.eps.values}
    small_eps = float(min(ds.eps.values))
    spikes = [s for (b2, eps, _), ss in found.items() if eps == small_eps for s in ss]
    with_lam = [s for s in spikes if s.get("threshold_crossing_step") is not None]
    lam_first = [s for s in with_lam if s["threshold_crossing_step"] < s["peak_step"]]
    curv_between = [s for s in with_lam if s["curvature_crossing_step"] is not None
                    and s["threshold_crossing_step"] <= s["curvature_crossing_step"] <= s["peak_step"]]
    frac = lambda a: round(len(a) / len(spikes), 3) if spikes else None
    b2s = sorted(float(b) for b in ds.b2.values)
    by_b2 = [counts[f"b2={b:g},eps={small_eps:g}"] for b in b2s]
    lower, upper = by_b2[: len(by_b2) // 2], by_b2[(len(by_b2) + 1) // 2:]
    quad_spikes = {f"{b2:g}": len(analysis.spikes(ds.quadratic_loss.sel(quadratic_b2=b2).values,
                                                  ds.quadratic_step.values, config["spike"]))
                   for b2 in ds.quadratic_b2.values}
    decay = v_decay(ds, config)
    large_eps = [c for k, c in counts.items() if float(k.split("eps=")[1]) >= 0.05]
    return {
        "threshold": threshold(config["b1"], config["lr"]),
        "spike_counts": counts,
        "spikes": {f"b2={b2:g},eps={eps:g},seed={s}": ss for (b2, eps, s), ss in found.items() if ss},
        "fraction_of_spikes_whose_peak_follows_a_threshold_crossing": frac(lam_first),
        "median_steps_from_threshold_crossing_to_peak":
            float(np.median([s["peak_step"] - s["threshold_crossing_step"] for s in with_lam])) if with_lam else None,
        "fraction_of_spikes_with_curvature_crossing_between_it_and_the_peak": frac(curv_between),
        "quadratic_spike_counts": quad_spikes,
        "quadratic_v_decay": decay,
        "claims": {
            "lambda_max(P^-1 H) crossed the threshold before the loss peak of >= 80% of spikes":
                bool(spikes) and frac(lam_first) >= 0.8,
            "the preconditioned directional curvature crossed it between that and the peak for >= 80%":
                bool(spikes) and frac(curv_between) >= 0.8,
            "fewer spikes with smaller b2: each b2 of the grid's lower half has fewer than each of its upper "
            "half (small eps)": max(lower) < min(upper),
            "no spikes with a large eps (>= 0.05)": all(c == 0 for c in large_eps) and bool(large_eps),
            "quadratic: v decays like b2^k while g^2 << v (log-slope within 2% of log b2)":
                all(d is not None and abs(d["log_v_slope_over_log_b2"] - 1) < 0.02 for d in decay.values()),
            "quadratic: the decay of v triggers spikes": all(c > 0 for c in quad_spikes.values()),
        },
    }


def figures(ds, config: dict, out_dir) -> list[str]:
    import matplotlib.pyplot as plt
    thr = threshold(config["b1"], config["lr"])
    found = network_spikes(ds, config)
    small_eps = float(min(ds.eps.values))
    b2 = float(max(ds.b2.values))
    seed = max(ds.seed.values, key=lambda s: len(found[(b2, small_eps, int(s))]))
    r = ds.sel(b2=b2, eps=small_eps, seed=seed)
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), constrained_layout=True, height_ratios=(1, 1, 0.7))
    axes[1].sharex(axes[0])
    plot.spike_trace(axes, ds.step.values, r.loss.values,
                     {"lambda_max(P^-1 H)": r.preconditioned_sharpness.values,
                      "|preconditioned directional curvature|": r.preconditioned_directional_curvature.values},
                     thr, f"threshold (2 + 2 b1)/((1 - b1) eta) = {thr:g}", found[(b2, small_eps, int(seed))])
    axes[0].set_title(f"Adam on sin x + sin 4x, b2 = {b2:g}, eps = {small_eps:g}, seed {seed}: "
                      "spikes\n(red: loss peaks, green: lambda_max(P^-1 H) crossing the threshold before them)")
    counts = xr.DataArray([[sum(len(found[(float(b), float(e), int(s))]) for s in ds.seed.values)
                            for e in ds.eps.values] for b in ds.b2.values],
                          coords={"b2": ds.b2.values, "eps": ds.eps.values}, dims=("b2", "eps"))
    plot.grouped_bars(axes[2], counts, "b2", "eps",
                      f"spikes, {ds.sizes['seed']} seeds\n(loss > {config['spike']:g} x its minimum)")
    path = plot.save(fig, f"{out_dir}/adam_spikes.png")
    q = ds.quadratic_preconditioner.rename(quadratic_b2="b2", quadratic_step="step")
    quad = plot.panels(f"{out_dir}/adam_spikes_quadratic.png",
                       [{"da": ds.quadratic_loss.rename(quadratic_b2="b2", quadratic_step="step"),
                         "ylabel": "loss x^2/2", "logy": True},
                        {"da": 1 / q, "ylabel": "P^-1 H = 1/P\n(dashed: threshold)", "logy": True,
                         "refs": {b: threshold(config["b1"], config["quadratic_lr"]) for b in q.b2.values}}],
                       hue="b2", over=None, title="Adam on x^2/2: v decays, 1/P crosses the threshold, a spike")
    return [path, quad]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
