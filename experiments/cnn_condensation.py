"""Initial condensation in a convolutional network: small-initialized kernels align.

Zhou, Zhou, Li & Xu 2023, "Understanding the Initial Condensation of Convolutional
Neural Networks". A two-layer CNN -- one convolution with C kernels of 3 x 3 (+ bias),
tanh, global average pooling, a dense readout -- is trained by full-batch gradient
descent on images, from the default (LeCun) initialization scaled by `init_scale`.
With a small initialization the kernels (each a 3 x 3 x c_in + 1 vector, bias
included) gather onto a few orientations early in training -- for tanh (multiplicity 1)
onto one line, i.e. at most 2 orientations -- while the loss has barely moved; from the
default initialization they stay spread out.

Counting as in `initial_condensation` (`engine.analysis.condensation`: cosine >= 0.9 to a
cluster's leading kernel); condensed = the 2 largest clusters hold >= 90% of the kernels.
Step size: each run takes lr = fraction * 2 / ||H||_2, re-measured every `every` steps
(`engine.probes.step_size`): a small initialization starts at a saddle, where a fixed
step that suits the default scale would take thousands of steps to escape.

Quick preset: the first 128 scikit-learn digits (8 x 8, standardized), 16 kernels,
init_scale 1, 1e-2, 1e-4, 3 seeds, 600 steps. Paper preset: 512 digits, 32 kernels; their
CIFAR-10 runs need an .npz the user passes (not shipped), and a deeper CNN's later layers
escape the small-initialization saddle far later (measured: a 2-conv-layer net at
init_scale 1e-4 had not left it after 600 steps), so both presets use one conv layer.
"""
from __future__ import annotations

import sys

import xarray as xr

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import FRACTION, POSITIVE, UNIT, Range

NAME = "cnn_condensation"
PRESETS = {
    "quick": {"n_train": 128, "channels": 16, "activation": "tanh", "init_scales": [1.0, 1e-2, 1e-4], "seeds": 3,
              "steps": 600, "every": 10, "fraction": 0.1, "cos_min": 0.9, "share_min": 0.05, "condensed": 0.9,
              "initial_loss": 0.95, "spread": 0.5},
}
RANGES = {"init_scales": POSITIVE, "fraction": FRACTION, "cos_min": UNIT, "share_min": UNIT,
          "condensed": FRACTION, "initial_loss": Range(0), "spread": UNIT}
PRESETS["paper"] = {**PRESETS["quick"], "n_train": 512, "channels": 32, "init_scales": [1.0, 1e-1, 1e-2, 1e-3, 1e-4],
                    "seeds": 8, "steps": 2000}


def run_sweep(config: dict, **options):
    d = data.digits(config["n_train"], images=True)
    model = models.cnn(d.x.shape[1:], channels=(config["channels"],), out_dim=10, activation=config["activation"])
    sim = simulate.simulation(model, d, "cross_entropy", optim.gd(), init.scaled(model), steps=config["steps"],
                              every=config["every"],
                              probes=("loss", probes.neuron_weights("Conv_0"), probes.step_size(config["fraction"])))
    return sweep.sweep(sim, grid={"init_scale": config["init_scales"]}, seeds=config["seeds"], **options)


def kernel_stats(ds, config: dict) -> xr.Dataset:
    stats = analysis.condensation(ds.neuron_weights, 2, cos_min=config["cos_min"], share_min=config["share_min"])
    hit = stats.condensed_share >= config["condensed"]
    return stats.assign(time=analysis.first_time(hit),
                        loss_fraction=analysis.at_first(ds.loss / ds.loss.isel(step=0), hit),
                        clusters_then=analysis.at_first(stats.clusters, hit))


def summarize(ds, config: dict) -> dict:
    k = kernel_stats(ds, config)
    small = k.sel(init_scale=[s for s in config["init_scales"] if s < 1.0])
    default = k.sel(init_scale=1.0) if 1.0 in config["init_scales"] else None
    out = {"time_to_condense_median": {f"{s:g}": float(k.time.sel(init_scale=s).median()) for s in config["init_scales"]},
           "clusters_at_condensation_max": float(small.clusters_then.max()),
           "loss_fraction_at_condensation_min": round(float(small.loss_fraction.min()), 4),
           "largest_two_clusters_share_max": {f"{s:g}": round(float(k.condensed_share.sel(init_scale=s).max()), 3)
                                              for s in config["init_scales"]},
           "final_loss_median": {f"{s:g}": round(float(ds.loss.sel(init_scale=s).isel(step=-1).median()), 4)
                                 for s in config["init_scales"]}}
    claims = {f"small init (init_scale < 1): every run's kernels condense onto <= 2 orientations (the 2 largest "
              f"clusters hold >= {config['condensed']:.0%}) while the loss is >= {config['initial_loss']:.0%} of "
              "its initial value": bool(small.time.notnull().all()
                                        and (small.loss_fraction >= config["initial_loss"]).all())}
    if default is not None:
        claims[f"default init: the kernels stay spread (the 2 largest clusters never hold > {config['spread']:.0%})"] = \
            bool((default.condensed_share <= config["spread"]).all())
    out["claims"] = claims
    return out


def figures(ds, config: dict, out_dir) -> list[str]:
    k = kernel_stats(ds, config)
    scales = list(ds.init_scale.values)
    fig, axes = plot.figure(1, len(scales) + 1, (3.4 * (len(scales) + 1), 3.6))
    for ax, s in zip(axes, scales):
        t = k.time.sel(init_scale=s, seed=0)
        at = int(t) if t.notnull() else int(ds.step[-1])
        plot.cosine_map(ax, ds.neuron_weights.sel(init_scale=s, seed=0, step=at).values,
                        f"init_scale {s:g}, step {at}\n{int(k.clusters.sel(init_scale=s, seed=0, step=at))} "
                        "orientation clusters")
    plot.draw_lines(axes[-1], k.condensed_share, "step", "init_scale", over="seed", style="-")
    axes[-1].axhline(config["condensed"], color="k", ls="--", lw=0.8)
    axes[-1].set(ylabel="share of kernels in the 2 largest clusters", xlabel="step", ylim=(0, 1.02))
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"CNN kernel condensation (Zhou et al. 2023): {config['channels']} tanh kernels 3x3 on digits, GD; "
                 "cosine similarity of (kernel, bias) at condensation (or at the end)", fontsize=10)
    return [plot.save(fig, f"{out_dir}/kernel_condensation.png")]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
