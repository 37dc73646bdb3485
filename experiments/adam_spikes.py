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
training resumes. Two settings, one sweep each:
  network    a 1-64-64-1 tanh MLP fitting sin x + sin 4x on 64 points of [-pi, pi] (MSE),
             over b2 and eps; lambda_max(P^-1 H) (Lanczos) and the preconditioned
             directional curvature every `every` steps;
  quadratic  L(x) = x^2 / 2, where P^-1 H = 1/P exactly, over b2: v's decay and spikes.

Spikes are found automatically (`engine.analysis.spikes`): a record whose loss exceeds
`spike` (100) times the lowest loss so far starts one. Per spike the summary gives its
onset and peak, the step at which lambda_max(P^-1 H) last crossed the threshold before
the peak, and the first step after that at which the directional curvature crossed it.
Records every 10 steps (quick preset) resolve that order to 10 steps; the network
hovers near the threshold (the adaptive edge of stability), so "the last crossing" is
usually 10-20 steps before the peak; the long sustained excursion the paper describes
is seen cleanly in the quadratic, where P^-1 H = 1/P rises as v decays.
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, losses, models, optim, plot, probes, simulate, sweep
from engine.errors import POSITIVE, UNIT, Range, require

NAME = "adam_spikes"
PRESETS = {
    "quick": {"widths": [1, 64, 64, 1], "n": 64, "lr": 0.001, "b1": 0.9, "b2s": [0.9, 0.95, 0.99, 0.999],
              "epss": [1e-8, 0.1], "seeds": 3, "steps": 10000, "every": 10, "spike": 100.0,
              "quadratic_lr": 0.01, "quadratic_b2s": [0.99, 0.995, 0.999], "quadratic_steps": 30000,
              "quadratic_every": 5}}
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
    return simulate.simulation(
        models.scalar(), data.point(), losses.power(2), optim.adam(lr=config["quadratic_lr"], b1=config["b1"]),
        init.point(1.0), steps=config["quadratic_steps"], every=config["quadratic_every"],
        probes=("loss", probes.scalar("preconditioner", lambda s: optim.preconditioner(s.opt_state)["x"][0]),
                probes.scalar("grad_sq", lambda s: s.params["x"][0] ** 2)))  # g = x for x^2/2


def run_sweep(config: dict, **options):
    require(len(config["b2s"]) >= 2, "b2s", f"got {config['b2s']!r}", "give at least two values of b2 to compare")
    net = sweep.sweep(network(config), grid={"b2": config["b2s"], "eps": config["epss"]}, seeds=config["seeds"],
                      name="network", **options)
    quad = sweep.sweep(quadratic(config), grid={"b2": config["quadratic_b2s"]}, seeds=1, name="quadratic", x64=True,
                       **options).isel(seed=0, drop=True).rename(b2="quadratic_b2", step="quadratic_step")  # v < 1e-12
    return net.assign({f"quadratic_{name}": quad[name] for name in ("loss", "preconditioner", "grad_sq")})


def threshold(b1: float, lr: float) -> float:
    """(2 + 2 b1) / ((1 - b1) lr), `engine.optim.stability_threshold` of Adam."""
    return optim.stability_threshold(optim.adam(), {"lr": lr, "b1": b1})


def network_spikes(ds, config) -> tuple[xr.DataArray, xr.DataArray]:
    """Each network run's spikes, [b2, eps, seed] lists (`engine.analysis.spikes`); their count [b2, eps]."""
    ds = ds.transpose("b2", "eps", "seed", ...)
    found = analysis.spikes_by_run(ds.loss, config["spike"], ds.preconditioned_sharpness,
                                   ds.preconditioned_directional_curvature, threshold(config["b1"], config["lr"]))
    return found, xr.apply_ufunc(np.vectorize(len, otypes=[int]), found).sum("seed")


def v_decay(ds, config) -> dict:
    """Per quadratic b2: the decay rate of v = (P / (1 - b1^t) - eps)^2 (1 - b2^t) per step,
    fitted where g^2 < 1e-3 v, against b2 (their ratio of logs)."""
    out, t = {}, ds.quadratic_step.values.astype(float)
    for b2 in ds.quadratic_b2.values:
        p, g_sq = (ds[f"quadratic_{name}"].sel(quadratic_b2=b2).values for name in ("preconditioner", "grad_sq"))
        v = (p / (1 - config["b1"] ** np.maximum(t, 1)) - 1e-8) ** 2 * (1 - b2 ** np.maximum(t, 1))
        fit = analysis.slope_on_longest_run(t, np.log(np.where(v > 0, v, 1.0)), (g_sq < 1e-3 * v) & (t > 0) & (v > 0))
        out[f"{b2:g}"] = None if fit is None else {"log_v_slope_over_log_b2": round(float(fit[0] / np.log(b2)), 4),
                                                   "quiet_steps": int(fit[1])}
    return out


def summarize(ds, config: dict) -> dict:
    (found, n), small_eps = network_spikes(ds, config), float(min(ds.eps.values))
    precursors = analysis.spike_precursors([s for ss in found.sel(eps=small_eps).values.ravel() for s in ss])
    first, between = (precursors[f"fraction_of_spikes_{k}"] or 0 for k in
                      ("whose_peak_follows_a_threshold_crossing", "with_curvature_crossing_between_it_and_the_peak"))
    by_b2, large_eps = n.sel(eps=small_eps).sortby("b2").values, n.sel(eps=n.eps[n.eps >= 0.05]).values
    quad_spikes = {f"{b2:g}": len(ss) for b2, ss in zip(ds.quadratic_b2.values, analysis.spikes_by_run(
        ds.quadratic_loss, config["spike"], dim="quadratic_step").values)}
    decay = v_decay(ds, config)
    return {
        "threshold": threshold(config["b1"], config["lr"]), "spike_counts": analysis.by_coords(n),
        "spikes": {run: spikes for run, spikes in analysis.by_coords(found).items() if spikes},
        **precursors, "quadratic_spike_counts": quad_spikes, "quadratic_v_decay": decay,
        "claims": {
            "lambda_max(P^-1 H) crossed the threshold before the loss peak of >= 80% of spikes": first >= 0.8,
            "the preconditioned directional curvature crossed it between that and the peak for >= 80%": between >= 0.8,
            "fewer spikes with smaller b2: each b2 of the grid's lower half has fewer than each of its upper "
            "half (small eps)": bool(max(by_b2[: by_b2.size // 2]) < min(by_b2[(by_b2.size + 1) // 2:])),
            "no spikes with a large eps (>= 0.05)": bool((large_eps == 0).all() and large_eps.size),
            "quadratic: v decays like b2^k while g^2 << v (log-slope within 2% of log b2)":
                all(d is not None and abs(d["log_v_slope_over_log_b2"] - 1) < 0.02 for d in decay.values()),
            "quadratic: the decay of v triggers spikes": all(c > 0 for c in quad_spikes.values()),
        },
    }


def figures(ds, config: dict, out_dir) -> list[str]:
    thr = threshold(config["b1"], config["lr"])
    found, counts = network_spikes(ds, config)
    small_eps, b2 = float(min(ds.eps.values)), float(max(ds.b2.values))
    seed = max(ds.seed.values, key=lambda s: len(found.sel(b2=b2, eps=small_eps, seed=s).item()))
    r = ds.sel(b2=b2, eps=small_eps, seed=seed)
    path = plot.spike_report(
        f"{out_dir}/adam_spikes.png", ds.step.values, r.loss.values,
        {"lambda_max(P^-1 H)": r.preconditioned_sharpness.values,
         "|preconditioned directional curvature|": r.preconditioned_directional_curvature.values},
        thr, f"threshold (2 + 2 b1)/((1 - b1) eta) = {thr:g}", found.sel(b2=b2, eps=small_eps, seed=seed).item(),
        counts, f"spikes, {ds.sizes['seed']} seeds\n(loss > {config['spike']:g} x its minimum)",
        f"Adam on sin x + sin 4x, b2 = {b2:g}, eps = {small_eps:g}, seed {seed}: "
        "spikes\n(red: loss peaks, green: lambda_max(P^-1 H) crossing the threshold before them)")
    q = ds[["quadratic_loss", "quadratic_preconditioner"]].rename(quadratic_b2="b2", quadratic_step="step")
    quad = plot.panels(f"{out_dir}/adam_spikes_quadratic.png", [
        {"da": q.quadratic_loss, "ylabel": "loss x^2/2", "logy": True},
        {"da": 1 / q.quadratic_preconditioner, "ylabel": "P^-1 H = 1/P\n(dashed: threshold)", "logy": True,
         "refs": dict.fromkeys(q.b2.values, threshold(config["b1"], config["quadratic_lr"]))}],
        hue="b2", over=None, title="Adam on x^2/2: v decays, 1/P crosses the threshold, a spike")
    return [path, quad]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
