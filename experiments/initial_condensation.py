"""Initial condensation: small-initialized networks' neurons align onto few orientations.

Zhou, Xu, Luo & Zhang 2021, "Towards Understanding the Condensation of Neural Networks
at Initial Training" (NeurIPS), and Chen, Zhou, Luo, Xu & Zhang 2023, "Phase Diagram of
Initial Condensation for Two-layer Neural Networks". A two-layer network
f(x) = sum_k a_k phi(w_k x + b_k) of width m starts from a small initialization, every
weight and bias ~ N(0, m^(-2 gamma)), and is trained by full-batch Adam. For an
activation of multiplicity p (phi^(s)(0) = 0 for s < p, phi^(p)(0) != 0: tanh p = 1,
x tanh x p = 2, x^2 tanh x p = 3), early in training the input weights (w_k, b_k) of
nearly all neurons gather onto at most 2p orientations (p lines through the origin):
their cosine-similarity matrix becomes a few +-1 blocks. ReLU is shown for comparison
(its dead neurons never move, so only the live ones can condense).

Orientation clusters are counted automatically (`engine.analysis.orientation_clusters`:
cosine >= 0.95 to a cluster's leading neuron; clusters holding >= 5% of the neurons
count). A run has condensed when its 2p largest clusters hold >= 90% of the neurons;
the time to condense is the first record step where that holds, reported against the
initialization scale gamma, together with the loss then (condensation comes before the
fit: "initial").

Quick preset: 1-D input + bias (so (w_k, b_k) lives in the plane, as in the paper's
figures), target sin x + sin 3x at 40 points of [-pi, pi], m = 100, Adam lr 1e-4 with
eps = 1e-30 in float64 (a small-initialized x^2 tanh network has gradients near 1e-21,
far below Adam's default eps, and their squares underflow float32), gamma 1..3.5,
2 seeds, records every 5 steps. Paper preset: m = 1000, more seeds and scales. (Data and
widths differ across the papers' figures; these are our choice.) Measured caveat: early
Adam steps are close to sign(gradient) per coordinate, i.e. one of 4 directions in the
plane, so with Adam x tanh and x^2 tanh both show 4 orientations (x^2 tanh's bound 2p = 6
is not reached); with a 5-D input (6-D weights) x^2 tanh spread over 8-10 orientations.
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import FINITE, FRACTION, POSITIVE, UNIT, Range

NAME = "initial_condensation"
MULTIPLICITY = {"tanh": 1, "xtanh": 2, "x2tanh": 3, "relu": 1}
PRESETS = {
    "quick": {"activations": ["tanh", "xtanh", "x2tanh", "relu"], "width": 100, "n": 40, "frequencies": [1, 3],
              "gammas": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5], "lr": 1e-4, "eps": 1e-30, "seeds": 2, "steps": 1500, "every": 5,
              "cos_min": 0.9, "share_min": 0.05, "condensed": 0.9, "initial_loss": 0.95, "small_gamma": 3.0,
              "heatmap_gamma": 2.5},
}
RANGES = {"frequencies": POSITIVE, "gammas": FINITE, "lr": POSITIVE, "eps": Range(0), "cos_min": UNIT,
          "share_min": UNIT, "condensed": FRACTION, "initial_loss": Range(0),
          "small_gamma": FINITE, "heatmap_gamma": FINITE}
PRESETS["paper"] = {**PRESETS["quick"], "width": 1000, "gammas": [0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0],
                    "seeds": 8, "steps": 5000, "every": 2, "small_gamma": 2.0, "heatmap_gamma": 2.0}


def build(activation: str, config: dict) -> simulate.Simulation:
    model = models.mlp((1, config["width"], 1), activation)
    d = data.sines(tuple(config["frequencies"]), config["n"], interval=(-np.pi, np.pi))
    return simulate.simulation(model, d, "mse", optim.adam(lr=config["lr"], eps=config["eps"]),
                               init.width_power(model), steps=config["steps"], every=config["every"],
                               probes=("loss", probes.neuron_weights("0")))


def run_sweep(config: dict, **options):
    # float64: at gamma = 3.5 an x^2 tanh gradient is ~1e-21, and its square underflows float32
    return sweep.sweep(lambda activation: build(activation, config), grid={"gamma": config["gammas"]},
                       static={"activation": config["activations"]}, seeds=config["seeds"], x64=True, **options)


def cluster_stats(ds, config: dict) -> xr.Dataset:
    """Per run and record: `clusters` (orientation clusters holding >= share_min of the
    neurons) and `condensed_share` (share of neurons in the 2p largest clusters)."""
    top = xr.DataArray([2 * MULTIPLICITY[str(a)] for a in ds.activation.values], coords={"activation": ds.activation})
    return analysis.condensation(ds.neuron_weights, top, cos_min=config["cos_min"], share_min=config["share_min"])


def condensation_time(stats: xr.Dataset, ds, threshold: float) -> xr.Dataset:
    """First record step with condensed_share >= threshold (NaN if never), and the loss
    then as a fraction of the initial loss, and the cluster count: [activation, gamma, seed]."""
    hit = stats.condensed_share >= threshold
    return xr.Dataset({"time": analysis.first_time(hit),
                       "loss_fraction": analysis.at_first(ds.loss / ds.loss.isel(step=0), hit),
                       "clusters": analysis.at_first(stats.clusters, hit)})


def summarize(ds, config: dict) -> dict:
    stats = cluster_stats(ds, config)
    t = condensation_time(stats, ds, config["condensed"])
    small = t.sel(gamma=[g for g in config["gammas"] if g >= config["small_gamma"]])
    out = {"time_to_condense_median": {}, "loss_fraction_at_condensation_min": {}, "clusters_at_condensation_max": {}}
    claims = {}
    for a in config["activations"]:
        p, s, ta = MULTIPLICITY[a], small.sel(activation=a), t.time.sel(activation=a).median("seed")
        out["time_to_condense_median"][a] = {f"{g:g}": float(ta.sel(gamma=g)) for g in config["gammas"]}
        out["loss_fraction_at_condensation_min"][a] = round(float(s.loss_fraction.min()), 4)
        out["clusters_at_condensation_max"][a] = float(s.clusters.max())
        out.setdefault("share_in_2p_largest_clusters_best", {})[a] = round(float(
            stats.condensed_share.sel(activation=a, gamma=s.gamma).max("step").min()), 3)
        if a == "relu":  # no multiplicity claim for ReLU: reported only
            continue
        claims[f"{a} (p = {p}), gamma >= {config['small_gamma']}: every run condenses (its {2 * p} largest "
               f"orientation clusters hold >= {config['condensed']:.0%} of the neurons) while the loss is still "
               f">= {config['initial_loss']:.0%} of its initial value"] = bool(
            s.time.notnull().all() and (s.loss_fraction >= config["initial_loss"]).all())
        never = np.inf  # a scale that never condenses counts as slowest
        claims[f"{a}: the smallest initialization condenses sooner than gamma = {config['gammas'][0]:g}"] = bool(
            np.nan_to_num(float(ta.isel(gamma=-1)), nan=never) < np.nan_to_num(float(ta.isel(gamma=0)), nan=never))
    out["claims"] = claims
    return out


def figures(ds, config: dict, out_dir) -> list[str]:
    stats = cluster_stats(ds, config)
    t = condensation_time(stats, ds, config["condensed"])
    acts = [a for a in config["activations"] if a in ds.activation.values]
    fig, axes = plot.figure(2, len(acts), (3.4 * len(acts), 6.8))
    g = float(ds.gamma.sel(gamma=config["heatmap_gamma"], method="nearest"))
    for j, a in enumerate(acts):
        step = t.time.sel(activation=a, gamma=g, seed=0)
        at = int(step) if np.isfinite(step) else int(ds.step[-1])
        n = int(stats.clusters.sel(activation=a, gamma=g, seed=0, step=at))
        plot.cosine_map(axes[0, j], ds.neuron_weights.sel(activation=a, gamma=g, seed=0, step=at).values,
                        f"{a} (p = {MULTIPLICITY[a]}), step {at}\n{n} orientation clusters")
        plot.draw_lines(axes[1, j], stats.condensed_share.sel(activation=a).isel(step=slice(1, None)), "step", "gamma",
                        over="seed", style="-")
        axes[1, j].axhline(config["condensed"], color="k", ls="--", lw=0.8)
        axes[1, j].set(xscale="log", xlabel="step", ylim=(0, 1.02))
    axes[1, 0].set_ylabel("share of neurons in the 2p largest clusters")
    axes[1, -1].legend(fontsize=7)
    fig.suptitle(f"Initial condensation (Zhou et al. 2021): cosine similarity of (w_k, b_k) at condensation, "
                 f"gamma = {g:g}, m = {config['width']}, Adam", fontsize=10)
    return [plot.save(fig, f"{out_dir}/condensation.png")]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
