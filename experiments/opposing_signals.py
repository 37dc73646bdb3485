"""Opposing signals: at the edge of stability a few groups of examples that pull one
large feature in opposite directions see their losses oscillate in anti-phase, and
they carry the sharpness with them.

Rosenfeld & Risteski 2023, "Outliers with Opposing Signals Have an Outsized Effect on
Neural Network Optimization". In real data a large-magnitude feature (their example:
sky) is associated with one label in some images and another in others; the network
keeps moving along it, each step lowering one group's loss and raising the other's,
and that back-and-forth is the oscillation of GD at the edge of stability.

The planted data set (our construction). n_clean examples x ~ N(0, I_D) with targets
from a fixed random tanh teacher, y = tanh(w . x) (w ~ N(0, I/D)), split at random into
`clean_groups` groups for reference; and two planted groups of `group_size` examples
each, whose first coordinate is the large feature x_0 = `signal` (the rest N(0, I)),
with opposite targets: +`target` for group "A", -`target` for group "B". The same
data without the planted groups is the ablation (a second sweep, `*_without_pair`). A tanh MLP
D-width-width-1 is trained by full-batch GD on the square loss at rates eta (traced).

Recorded every step (`every` = 1, so GD's period-2 oscillation is resolved): the loss,
the outputs on every training example (`prediction`), from which each group's loss
l_g(t) = mean_{i in g} 1/2 (f(x_i) - y_i)^2 is computed afterwards; the sharpness
(Lanczos, warm-started) every `sharpness_every` steps.

The measures (ours; the paper reads the anti-phase from plots), over the late phase
(the last `late` fraction of the steps), from the changes Delta l_g(t) = l_g(t+1) -
l_g(t): the anti-phase of two groups, rho(g, h) = corr(Delta l_g, Delta l_h), -1 when
one group's loss rises exactly when the other's falls; a group's oscillation
amplitude, a_g = mean_t |Delta^2 l_g(t)| / 4 (the size of its period-2 component);
and the sharpness relative to the threshold, median lambda_max / (2/eta), with the pair
and without it.

Claims (medians over seeds), at every rate whose run with the pair is at the edge of
stability (late sharpness within 10% of 2/eta; at least one must be): (1) the planted
pair oscillates in anti-phase, rho(A, B) <= -0.5; (2) it oscillates most: the
amplitude of each planted group is >= 2x that of every clean group; (3) it carries the
sharpness to the edge: without the pair the same rate's late sharpness is below
0.8 x 2/eta.

Quick preset (2-core CPU, ~35 s): D = 8, 64 clean examples in 4 groups, two planted
groups of 8 with x_0 = 4 and targets +-1, MLP 8-32-32-1 tanh, eta in {0.1, 0.2}, 2000
steps, 4 seeds. Measured (medians): at eta 0.2 the run with the pair is at the edge
(late sharpness 0.999 x 2/eta); rho(A, B) = -0.996; without the pair the sharpness
stays at 0.40 x 2/eta (about 4, never sharpening), so the pair is what brings the run
to the edge. On the way there the sharpness overshoots 2/eta four times (steps ~300,
450, 600, 750 in seed 0) and at each the planted groups' losses spike 10-30x, more than
any clean group's (the figure). In the late phase, though, the oscillation amplitude of
B is only 1.4x the largest clean group's (A 2.6x): claim (2), defined on the late
phase, fails. At eta 0.1 the run is not at the edge within 2000 steps (0.735 x 2/eta;
0.203 without the pair) and its group losses fall together (rho +0.999).
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import FRACTION, POSITIVE, Range, require

NAME = "opposing_signals"
PRESETS = {
    "quick": {"dim": 8, "n_clean": 64, "clean_groups": 4, "group_size": 8, "signal": 4.0, "target": 1.0,
              "width": 32, "lrs": [0.1, 0.2], "seeds": 4, "steps": 2000, "sharpness_every": 10, "late": 0.5,
              "data_seed": 0},
    "paper": {"dim": 32, "n_clean": 512, "clean_groups": 8, "group_size": 32, "signal": 6.0, "target": 1.0,
              "width": 256, "lrs": [0.02, 0.05, 0.1], "seeds": 8, "steps": 20000, "sharpness_every": 10,
              "late": 0.5, "data_seed": 0},
}
RANGES = {"dim": Range(2, integer=True), "n_clean": Range(2, integer=True), "clean_groups": Range(2, integer=True),
          "group_size": Range(1, integer=True), "signal": POSITIVE, "target": POSITIVE,
          "width": Range(1, integer=True), "lrs": POSITIVE, "late": FRACTION, "sharpness_every": Range(1, integer=True), "data_seed": Range(0, integer=True)}


def planted_data(config: dict, with_pair: bool = True) -> tuple[data.Dataset, np.ndarray]:
    """(Dataset x [n, D], y [n, 1]; group label per example [n]: "clean0".., "A", "B")."""
    require(config["n_clean"] >= config["clean_groups"], "clean_groups",
            f"{config['clean_groups']} groups of {config['n_clean']} clean examples", "use fewer groups")
    rng = np.random.default_rng(config["data_seed"])
    d, m, k = config["dim"], config["group_size"], config["n_clean"]
    teacher = rng.standard_normal(d) / np.sqrt(d)
    x = rng.standard_normal((k, d))
    y = np.tanh(x @ teacher)
    groups = np.array([f"clean{i}" for i in rng.permutation(np.arange(k) % config["clean_groups"])])
    if with_pair:
        pair = rng.standard_normal((2 * m, d))
        pair[:, 0] = config["signal"]
        x = np.concatenate([x, pair])
        y = np.concatenate([y, np.full(m, config["target"]), np.full(m, -config["target"])])
        groups = np.concatenate([groups, ["A"] * m, ["B"] * m])
    return data.Dataset(np.asarray(x, np.float32), np.asarray(y[:, None], np.float32)), groups


def build(config: dict, with_pair: bool = True) -> simulate.Simulation:
    """The run on the data with (or, the ablation, without) the planted pair; the
    outputs on every example are recorded with it only."""
    model = models.mlp((config["dim"], config["width"], config["width"], 1), "tanh")
    d, _ = planted_data(config, with_pair)
    sharp = probes.every(config["sharpness_every"], "sharpness")
    return simulate.simulation(model, d, "mse", optim.gd(), init.scaled(model), steps=config["steps"],
                               every=1, probes=("loss", sharp, *(("prediction",) * with_pair)))


def run_sweep(config: dict, **options):
    grid = {"lr": [float(x) for x in config["lrs"]]}
    ds = sweep.sweep(build(config), grid=grid, seeds=config["seeds"], name="with_pair", **options)
    ablation = sweep.sweep(build(config, False), grid=grid, seeds=config["seeds"], name="without_pair", **options)
    return ds.assign(loss_without_pair=ablation.loss, sharpness_without_pair=ablation.sharpness,
                     diverged_without_pair=ablation.diverged)


def group_losses(ds, config: dict) -> xr.DataArray:
    """l_g(t): [..., step, group] of the runs with the planted pair."""
    d, groups = planted_data(config)
    per_example = 0.5 * (ds.prediction.isel(output=0) - xr.DataArray(np.asarray(d.y)[:, 0], dims="example")) ** 2
    names = sorted(set(groups))
    return xr.concat([per_example.isel(example=np.flatnonzero(groups == g)).mean("example") for g in names],
                     dim=xr.DataArray(names, dims="group", name="group"))


def _late(da, config):
    n = da.sizes["step"]
    return da.isel(step=slice(n - int(config["late"] * n), None))


def _corr(a, b, dim="step"):
    a, b = a - a.mean(dim), b - b.mean(dim)
    return (a * b).sum(dim) / np.sqrt((a * a).sum(dim) * (b * b).sum(dim))


def measures(ds, config: dict) -> xr.Dataset:
    """Per run: rho of every pair of groups [seed, lr, pair], each group's amplitude
    [seed, lr, group], and the late sharpness over 2/eta with and without the pair."""
    losses = _late(group_losses(ds, config), config)
    change = losses.diff("step")
    names = list(losses.group.values)
    pairs = [(g, h) for i, g in enumerate(names) for h in names[i + 1:]]
    pick = lambda i: change.sel(group=xr.DataArray([p[i] for p in pairs], dims="pair")).drop_vars("group")
    ratio = lambda s: (_late(s, config).median("step") * s.lr / 2)
    return xr.Dataset({"rho": _corr(pick(0), pick(1)).assign_coords(pair=[f"{g}-{h}" for g, h in pairs]),
                       "amplitude": abs(losses.diff("step", n=2)).mean("step") / 4,
                       "edge_with_pair": ratio(ds.sharpness), "edge_without_pair": ratio(ds.sharpness_without_pair)})


def summarize(ds, config: dict) -> dict:
    m = measures(ds, config).median("seed")
    clean = [g for g in m.group.values if g not in ("A", "B")]
    per_lr = {}
    for lr in ds.lr.values:
        r = m.sel(lr=lr)
        per_lr[f"{lr:g}"] = {
            "rho_AB": round(float(r.rho.sel(pair="A-B")), 3),
            "amplitude_A": float(r.amplitude.sel(group="A")), "amplitude_B": float(r.amplitude.sel(group="B")),
            "amplitude_clean_max": float(r.amplitude.sel(group=clean).max()),
            "late_sharpness_over_threshold_with_pair": round(float(r.edge_with_pair), 3),
            "late_sharpness_over_threshold_without_pair": round(float(r.edge_without_pair), 3)}
    edge = [x for x in per_lr.values() if abs(x["late_sharpness_over_threshold_with_pair"] - 1) <= 0.1]
    return {"per_lr": per_lr, "rates_at_the_edge": [k for k, x in per_lr.items() if x in edge],
            "diverged_runs": int(ds.diverged.sum()),
            "diverged_runs_without_pair": int(ds.diverged_without_pair.sum()), "claims": {
                "some rate trains at the edge of stability with the pair (late sharpness within 10% of 2/eta)":
                    bool(edge),
                "at the edge the planted pair oscillates in anti-phase (rho(A, B) <= -0.5)":
                    bool(edge) and all(x["rho_AB"] <= -0.5 for x in edge),
                "at the edge it oscillates most: each planted group's amplitude >= 2x every clean group's":
                    bool(edge) and all(min(x["amplitude_A"], x["amplitude_B"]) >= 2 * x["amplitude_clean_max"]
                                       for x in edge),
                "it carries the sharpness to the edge: without it, at the same rate, below 0.8 x 2/eta":
                    bool(edge) and all(x["late_sharpness_over_threshold_without_pair"] < 0.8 for x in edge)}}


def figures(ds, config: dict, out_dir) -> list[str]:
    lr = float(ds.lr.max())
    losses = group_losses(ds, config).sel(lr=lr).isel(seed=0)
    early = losses.step.values[: max(2, int(0.4 * losses.sizes["step"]))]
    tail = losses.step.values[-min(40, losses.sizes["step"]):]
    fig, axes = plot.figure(3, 1, (8, 9.5))
    for ax, window in ((axes[0], early), (axes[2], tail)):
        for g in losses.group.values:
            colour, width = {"A": ("C3", 1.6), "B": ("C0", 1.6)}.get(g, ("0.6", 0.8))
            ax.plot(window, losses.sel(group=g, step=window), color=colour, lw=width, label=g)
        ax.set(yscale="log", ylabel="group loss")
    axes[0].set_title(f"eta = {lr:g}, seed 0: group losses over the first {len(early)} steps")
    axes[0].legend(fontsize=7, ncol=3)
    for name, c, label in (("sharpness", "k", "with the planted pair"), ("sharpness_without_pair", "C2", "without")):
        s = ds[name].sel(lr=lr).isel(seed=0).dropna("step")
        axes[1].plot(s.step.sel(step=s.step <= early[-1]), s.sel(step=s.step <= early[-1]), color=c, label=label)
    axes[1].axhline(2 / lr, color="k", ls="--", lw=1, label="2/eta")
    axes[1].set(ylabel="sharpness", title="the sharpness over the same steps")
    axes[1].legend(fontsize=7)
    axes[2].set(xlabel="step", title=f"the last {len(tail)} steps: A and B in anti-phase")
    fig.suptitle(f"Opposing signals (Rosenfeld & Risteski 2023): groups A and B share a feature of size "
                 f"{config['signal']:g},\nwith opposite targets")
    return [plot.save(fig, f"{out_dir}/opposing_signals.png")]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
