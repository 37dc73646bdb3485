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
training resumes. Two sweeps:
  network    full-batch Adam on one of three settings (`setting`, one preset each), over
             b2 and eps; lambda_max(P^-1 H) (Lanczos) and the preconditioned directional
             curvature every `every` steps, the same probes and analysis for all three:
     mlp          (`--preset quick`) a 1-64-64-1 tanh MLP fitting sin x + sin 4x on 64
                  points of [-pi, pi] (MSE);
     cnn          (`--preset quick_cnn`) `engine.models.cnn`, two 3x3 tanh conv layers
                  of 8 channels, global average pooling, a dense readout, on the first 32
                  8x8 scikit-learn digits (standardized pixels; 10 classes);
     transformer  (`--preset quick_transformer`) `engine.models.transformer` as it is
                  (pre-LayerNorm, causal attention, 1 layer, d_model 16, 2 heads, GELU MLP
                  of width 32), on the single-anchor shift task (`engine.anchors.single`:
                  sequences of 8 tokens, a key in 5..19 followed by an anchor 1-4, label
                  key + (5, 1, -2, -8) mod 20; 16 sequences per anchor), last-token logits;
  quadratic  L(x) = x^2 / 2, where P^-1 H = 1/P exactly, over b2: v's decay and spikes.

Bai et al. verify the mechanism on FNNs, CNNs and Transformers; we could read their
abstract but not their CNN and Transformer configurations, so the data, sizes, losses
and learning rates of those two settings are our choices, made to run on a CPU: a data
set the package ships or generates, a few thousand parameters, softmax cross-entropy
(`loss`; `--set loss=mse` trains on one-hot targets, as the MLP does), a learning rate
at which the loss falls below 1e-4 within the run (CNN 0.05, transformer 0.03), b2 in
{0.9, 0.999}, eps in {1e-8, 0.1}, one seed, 6000 steps. A float32 cross-entropy this
low is quantized (~2e-9 for 64 examples) and reaches exactly 0, where any later loss
would count as a spike, so these two settings count spikes on the loss raised to
`loss_floor` = 1e-7 (a spike then means a loss above 1e-5); the MLP's floor is 0.

Measured with the quick presets (one seed each, 7 and 13 minutes on a busy 2-core
CPU; the transformer ~1 min on a quiet one): the transformer at b2 = 0.9, eps = 1e-8
spikes 18 times, periodically: the loss
falls to ~1e-8, lambda_max(P^-1 H) climbs from ~5 past 38/eta = 1267, the directional
curvature follows, and the loss jumps to 1e-3 .. 1 and recovers within ~100 steps.
At records every 10 steps, 67% of these spikes peak after a lambda_max crossing (the
rest cross in the peak's own record), below the claim's 80%, which fails; 94% have the
curvature crossing in between, which holds. (Before the attention softmax was
differentiated by its closed form, `models.softmax`, the same preset rounded
differently and gave 21 spikes, 67% and 76%.) b2 = 0.999 gives no spike in 6000 steps
(lambda_max(P^-1 H) <= 0.007 x the threshold after step 500), so the b2 claim fails the
other way round (more spikes with the smaller b2 at this length); eps = 0.1 gives none.
The CNN gives no spike at all: at b2 = 0.999 the loss falls smoothly to 1.4e-5 while
lambda_max(P^-1 H) settles at 0.03 x the threshold; at b2 = 0.9 the loss reaches the
float32 floor and lambda_max(P^-1 H) rises to 1.4 x the threshold late in the run, but no
loss rise exceeds 100 x the floor. Every claim that needs spikes is False for the CNN
and the summary says so with its counts. The paper presets are larger versions of the
same settings, for an accelerator, not run here.

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

from engine import analysis, anchors, data, experiment, init, losses, models, optim, plot, probes, simulate, sweep
from engine.errors import POSITIVE, UNIT, Range, require

NAME = "adam_spikes"
_QUADRATIC = {"quadratic_lr": 0.01, "quadratic_b2s": [0.99, 0.995, 0.999], "quadratic_steps": 30000,
              "quadratic_every": 5}
PRESETS = {
    "quick": {"setting": "mlp", "loss": "mse", "widths": [1, 64, 64, 1], "n": 64, "lr": 0.001, "b1": 0.9,
              "b2s": [0.9, 0.95, 0.99, 0.999], "epss": [1e-8, 0.1], "seeds": 3, "steps": 10000, "every": 10,
              "spike": 100.0, "loss_floor": 0.0, **_QUADRATIC},
    "quick_cnn": {"setting": "cnn", "loss": "cross_entropy", "channels": [8, 8], "n": 32, "lr": 0.05, "b1": 0.9,
                  "b2s": [0.9, 0.999], "epss": [1e-8, 0.1], "seeds": 1, "steps": 6000, "every": 10, "spike": 100.0,
                  "loss_floor": 1e-7, **_QUADRATIC},
    "quick_transformer": {"setting": "transformer", "loss": "cross_entropy", "vocab": 20, "d_model": 16, "heads": 2,
                          "depth": 1, "n": 16, "lr": 0.03, "b1": 0.9, "b2s": [0.9, 0.999], "epss": [1e-8, 0.1],
                          "seeds": 1, "steps": 6000, "every": 10, "spike": 100.0, "loss_floor": 1e-7,
                          **_QUADRATIC},
}
RANGES = {"lr": POSITIVE, "b1": UNIT, "b2s": UNIT, "epss": Range(0), "spike": Range(1, lo_open=True),
          "loss_floor": Range(0),
          "quadratic_lr": POSITIVE, "quadratic_b2s": UNIT}
PRESETS["paper"] = {**PRESETS["quick"], "widths": [1, 256, 256, 1], "n": 256, "epss": [1e-8, 1e-4, 0.1],
                    "seeds": 8, "steps": 50000, "every": 5, "quadratic_steps": 60000}
PRESETS["paper_cnn"] = {**PRESETS["quick_cnn"], "channels": [32, 32], "n": 512, "b2s": [0.9, 0.95, 0.99, 0.999],
                        "epss": [1e-8, 1e-4, 0.1], "seeds": 8, "steps": 30000, "every": 5}
PRESETS["paper_transformer"] = {**PRESETS["quick_transformer"], "vocab": 100, "d_model": 64, "heads": 4, "depth": 2,
                                "n": 200, "b2s": [0.9, 0.95, 0.99, 0.999], "epss": [1e-8, 1e-4, 0.1], "seeds": 8,
                                "steps": 30000, "every": 5}
PROBES = ("loss", "preconditioned_sharpness", "preconditioned_directional_curvature")


def _count(config, field: str) -> int:
    require(field in config, field, f"the {config['setting']} setting needs {field!r}",
            f"start from --preset {'quick' if config['setting'] == 'mlp' else 'quick_' + config['setting']}")
    v = config[field]
    ok = all(isinstance(x, int) and x >= 1 for x in (v if isinstance(v, list) else [v]))
    require(ok, field, f"got {v!r}", "use whole numbers >= 1")
    return v


def mlp_task(config):
    """A tanh MLP of `widths` (1-64-64-1) on sin x + sin 4x at `n` points of [-pi, pi]."""
    return models.mlp(tuple(_count(config, "widths")), "tanh"), data.sines((1, 4), _count(config, "n"))


def cnn_task(config):
    """`engine.models.cnn` (tanh, 3x3 convs with `channels`, global average pooling) on the
    first `n` 8x8 digits (pixels standardized), one-hot targets."""
    model = models.cnn((8, 8, 1), tuple(_count(config, "channels")), 10, "tanh")
    digits = data.digits(_count(config, "n"), images=True)
    return model, data.Dataset(digits.x, digits.y)


def transformer_task(config):
    """`engine.models.transformer` (pre-LayerNorm, causal, GELU MLP of width 2 d_model) on
    the single-anchor shift task (`engine.anchors.single`): `n` sequences of length 8 per
    anchor, keys from 5 to vocab - 1; the last position predicts key + shift (mod vocab),
    one-hot targets over the vocabulary."""
    vocab, d_model, heads, depth = (_count(config, k) for k in ("vocab", "d_model", "heads", "depth"))
    require(vocab > 5, "vocab", f"got {vocab}", "use vocab >= 6: keys are 5 .. vocab - 1, anchors 1 .. 4")
    model = models.transformer(vocab, 8, d_model=d_model, heads=heads, depth=depth, mlp_ratio=2)
    task = anchors.single(_count(config, "n"), 8, vocab, key_low=5, task="shift")
    return model, data.Dataset(task.x, task.y)


SETTINGS = {"mlp": mlp_task, "cnn": cnn_task, "transformer": transformer_task}
TITLES = {"mlp": "a tanh MLP on sin x + sin 4x", "cnn": "a CNN on 8x8 digits",
          "transformer": "a transformer on the single-anchor task"}


def network(config) -> simulate.Simulation:
    """Full-batch Adam on the setting's task, with the precursors recorded every `every` steps."""
    require(config.get("setting") in SETTINGS, "setting", f"got {config.get('setting')!r}",
            f"use one of {', '.join(SETTINGS)} (presets quick, quick_cnn, quick_transformer)")
    require(config.get("loss") in ("mse", "cross_entropy"), "loss", f"got {config.get('loss')!r}",
            "use mse or cross_entropy")
    model, task = SETTINGS[config["setting"]](config)
    return simulate.simulation(model, task, config["loss"], optim.adam(lr=config["lr"], b1=config["b1"]),
                               init.scaled(model), steps=config["steps"], every=config["every"], probes=PROBES)


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
    """Each network run's spikes, [b2, eps, seed] lists (`engine.analysis.spikes`, on the
    loss raised to `loss_floor`); their count [b2, eps]."""
    ds = ds.transpose("b2", "eps", "seed", ...)
    found = analysis.spikes_by_run(np.maximum(ds.loss, config["loss_floor"]), config["spike"],
                                   ds.preconditioned_sharpness,
                                   ds.preconditioned_directional_curvature, threshold(config["b1"], config["lr"]))
    return found, xr.apply_ufunc(np.vectorize(len, otypes=[int]), found).sum("seed")


def first_crossings(ds, config) -> xr.Dataset:
    """Per network run, the first record step at which lambda_max(P^-1 H) (`sharpness`)
    and the preconditioned directional curvature (`curvature`) exceed the threshold, NaN
    if never. The curvature is a Rayleigh quotient of P^-1 H, so it cannot cross first."""
    thr = threshold(config["b1"], config["lr"])
    return xr.Dataset({"sharpness": analysis.first_time(ds.preconditioned_sharpness > thr),
                       "curvature": analysis.first_time(ds.preconditioned_directional_curvature > thr)})


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
        "setting": config["setting"], "threshold": threshold(config["b1"], config["lr"]),
        "spike_counts": analysis.by_coords(n),
        "spikes": {run: spikes for run, spikes in analysis.by_coords(found).items() if spikes},
        **precursors, "first_crossing_steps": {name: {run: None if np.isnan(t) else int(t) for run, t in
                                                       analysis.by_coords(steps).items()}
                                                for name, steps in first_crossings(ds, config).items()},
        "quadratic_spike_counts": quad_spikes, "quadratic_v_decay": decay,
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
    small_eps = float(min(ds.eps.values))  # the largest b2 with spikes (or the largest b2)
    b2 = float(max(ds.b2.values[(counts.sel(eps=small_eps).values > 0)], default=max(ds.b2.values)))
    seed = max(ds.seed.values, key=lambda s: len(found.sel(b2=b2, eps=small_eps, seed=s).item()))
    r = ds.sel(b2=b2, eps=small_eps, seed=seed)
    path = plot.spike_report(
        f"{out_dir}/adam_spikes{'' if config['setting'] == 'mlp' else '_' + config['setting']}.png",
        ds.step.values, r.loss.values,
        {"lambda_max(P^-1 H)": r.preconditioned_sharpness.values,
         "|preconditioned directional curvature|": r.preconditioned_directional_curvature.values},
        thr, f"threshold (2 + 2 b1)/((1 - b1) eta) = {thr:g}", found.sel(b2=b2, eps=small_eps, seed=seed).item(),
        counts, f"spikes, {ds.sizes['seed']} seeds\n(loss > {config['spike']:g} x its minimum"
        + (f",\nfloored at {config['loss_floor']:g})" if config["loss_floor"] else ")"),
        f"Adam on {TITLES[config['setting']]} ({config['loss']}),\nb2 = {b2:g}, eps = {small_eps:g}, seed {seed}: "
        "spikes (red: loss peaks,\ngreen: lambda_max(P^-1 H) crossing the threshold before them)")
    q = ds[["quadratic_loss", "quadratic_preconditioner"]].rename(quadratic_b2="b2", quadratic_step="step")
    quad = plot.panels(f"{out_dir}/adam_spikes_quadratic.png", [
        {"da": q.quadratic_loss, "ylabel": "loss x^2/2", "logy": True},
        {"da": 1 / q.quadratic_preconditioner, "ylabel": "P^-1 H = 1/P\n(dashed: threshold)", "logy": True,
         "refs": dict.fromkeys(q.b2.values, threshold(config["b1"], config["quadratic_lr"]))}],
        hue="b2", over=None, title="Adam on x^2/2: v decays, 1/P crosses the threshold, a spike")
    return [path, quad]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
