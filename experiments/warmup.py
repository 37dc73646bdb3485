"""Learning-rate warmup: the sharpness is pushed down to 2/eta_t, so larger target rates train.

Kalra & Barkeshli 2024, "Why Warmup the Learning Rate? Underlying Mechanisms and
Improvements" (NeurIPS 2024); Gilmer et al. 2021, "A Loss Curvature Perspective on
Training Instability in Deep Learning". The rate rises linearly from 0 to the target
eta_trgt over `warmup_steps` updates (`engine.schedules.warmup`), eta_t = eta_trgt
min(t / w, 1), then stays. GD is stable on the local quadratic model only while the
sharpness lambda_max(H) < 2/eta_t; Adam only while lambda_max(P_t^-1 H) <
(2 + 2 b1) / ((1 - b1) eta_t) (Cohen et al. 2022; `engine.optim.stability_threshold`).
Claims: (1) during warmup, once eta_t reaches the edge, the (preconditioned) sharpness
tracks that threshold down as eta_t keeps rising (the "sharpness reduction" regime of
a network in standard parameterization); (2) so a longer warmup lets a larger target
rate train without diverging; we report the largest stable target rate per warmup
length, for GD and Adam.

Setting (our choices; the paper trains FCNs and WideResNets on CIFAR-10 with SGD/Adam):
a 64-64-64-10 ReLU MLP in standard parameterization (W ~ N(0, 1/fan_in), zero biases)
on the first 128 scikit-learn digits, full batch, loss 1/n sum_i 1/2 ||f(x_i) - y_i||^2
with one-hot targets (the paper's MSE). Its initial sharpness lambda_0 ~ 18 (2/lambda_0
~ 0.11) falls by itself at a small rate, as in their sharpness-reduction regime.
Warmup lengths {0, 50, 200, 800} in 1000 steps; GD target rates 0.1 x 2^(k/2),
k = 0..10 (0.1 .. 3.2, i.e. ~1 to ~28 x 2/lambda_0); Adam (b1 0.9, b2 0.999, eps 1e-8)
1e-3 x 2^k, k = 0..10; 2 seeds. GD and Adam are two sweeps (different programs and
rate grids), joined on an `optimizer` dimension with a `rate` index and the 2-D
coordinate lr(optimizer, rate); `sharpness` is measured for GD,
`preconditioned_sharpness` for Adam (Lanczos, every `sharpness_every` steps).

A run diverges (engine flag `diverged`) when its loss turns non-finite or exceeds
`diverge_above` (100, ~50x the loss at initialization). The largest stable target rate
of a warmup length is the largest grid rate such that it and every smaller rate train
without diverging in every seed (read from `diverged` x the lr grid); `at_grid_top`
says when no rate of the grid diverged (a lower bound). A run is "trained" if, besides,
its final loss is below `trained_below` x its initial loss (Adam can kill every ReLU
at a large rate: finite loss, nothing learned); reported, not used by the claims.

Tracking is measured per run on the curvature records inside the warmup (0 < t <= w):
from the first at which curvature / threshold(eta_t) >= 0.9 ("at the edge") to the end
of the warmup; a (warmup, rate) cell counts where every seed is stable and trained and
eta_t at least doubles over those records (so staying at ratio ~1 needs the curvature
to fall ~2x). Claim: the median over seeds of each run's median ratio there lies in
[0.8, 1.2] in every such cell, and there is at least one. The monotone claim: each
longer warmup's largest stable rate is at least the previous one's divided by one
grid step, and the longest warmup's is >= 2x that without warmup.

Measured on the quick preset (2 seeds, ~100 s on 2 cores). GD: lambda_0 = 17.7
(2/lambda_0 = 0.113); the largest stable target rate is 0.57 without warmup (5.0 x
2/lambda_0: the catapult of a large-lr start) and 1.6 (14.2 x 2/lambda_0) with every
warmup length 50, 200, 800: the gain saturates at w = 50, and every GD run diverges
at 2.26 and 3.2 whatever the warmup, near eta_t ~ 2.2, a floor under which the
sharpness is not pushed. During warmup the sharpness tracks 2/eta_t from above, lagging
more the faster eta_t rises: median ratios 1.04-1.13 at w = 800, 1.09-1.28 at w = 200,
so the tracking claim with its [0.8, 1.2] band FAILS at w = 200 for the two fastest
ramps (1.23, 1.28). Adam: the largest stable target rate is 0.064 (w = 0), 0.128 (50),
0.512 (200), 0.128 (800): not monotone (w = 800 loses a seed at 0.256, at step ~613,
late in the ramp), so that claim FAILS at this scale, while the preconditioned
sharpness tracks its threshold (ratios 0.94-0.98 in the 3 counted cells). Above ~0.25
Adam kills the ReLUs (final loss 0.45 = predicting the mean): largest trained rates
0.032, 0.064, 0.128, 0.064.

Paper preset: depth-4 width-512 ReLU FCN on 5000 CIFAR-10 images from the
user's .npz (`--set data=/path/cifar10.npz`, flattened and standardized), full batch,
warmup {0, 64, 256, 1024} in 4000 steps (their T_wrm in spirit), 3 seeds.
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import data, experiment, init, models, optim, plot, probes, schedules, simulate, sweep
from engine.errors import COUNT, FRACTION, POSITIVE, UNIT, Range, require

NAME = "warmup"
PRESETS = {
    "quick": {"data": "digits", "n_train": 128, "widths": [64, 64, 64, 10], "activation": "relu",
              "warmups": [0, 50, 200, 800], "gd_lrs": [0.1 * 2 ** (k / 2) for k in range(11)],
              "adam_lrs": [1e-3 * 2 ** k for k in range(11)], "b1": 0.9, "b2": 0.999, "eps": 1e-8,
              "seeds": 2, "steps": 1000, "every": 10, "sharpness_every": 50, "diverge_above": 100.0,
              "trained_below": 0.1},
    "paper": {"data": "cifar10.npz", "n_train": 5000, "widths": [3072, 512, 512, 512, 10], "activation": "relu",
              "warmups": [0, 64, 256, 1024], "gd_lrs": [0.01 * 2 ** (k / 2) for k in range(13)],
              "adam_lrs": [1e-5 * 2 ** (k / 2) for k in range(13)], "b1": 0.9, "b2": 0.999, "eps": 1e-8,
              "seeds": 3, "steps": 4000, "every": 20, "sharpness_every": 40, "diverge_above": 100.0,
              "trained_below": 0.1},
}
RANGES = {"n_train": Range(1, integer=True, none_ok=True), "warmups": Range(0), "gd_lrs": POSITIVE,
          "adam_lrs": POSITIVE, "b1": Range(0, 1, hi_open=True), "b2": UNIT, "eps": Range(0), "every": COUNT,
          "sharpness_every": COUNT, "diverge_above": POSITIVE, "trained_below": FRACTION}
OPTIMIZERS = ("gd", "adam")
CURVATURE = {"gd": "sharpness", "adam": "preconditioned_sharpness"}


def optimizer(name: str, config: dict) -> optim.Optimizer:
    if name == "gd":
        return optim.gd(schedule=schedules.warmup())
    return optim.adam(b1=config["b1"], b2=config["b2"], eps=config["eps"], schedule=schedules.warmup())


def build(name: str, config: dict) -> simulate.Simulation:
    model = models.mlp(tuple(config["widths"]), config["activation"])
    d = data.named(config["data"], config["n_train"])
    require(d.x.shape[1] == config["widths"][0] and d.y.shape[1] == config["widths"][-1], "widths",
            f"the data have {d.x.shape[1]} inputs and {d.y.shape[1]} outputs, widths are {config['widths']}",
            f"use widths starting with {d.x.shape[1]} and ending with {d.y.shape[1]}")
    require(config["sharpness_every"] % config["every"] == 0, "sharpness_every",
            f"got {config['sharpness_every']} with every = {config['every']}", "use a multiple of every")
    curvature = getattr(probes, CURVATURE[name])(iters=20, warm_iters=10)
    return simulate.simulation(model, d, "mse", optimizer(name, config), init.scaled(model), steps=config["steps"],
                               every=config["every"], diverge_above=config["diverge_above"],
                               probes=("loss", probes.every(config["sharpness_every"], curvature)))


def run_sweep(config: dict, **options):
    for field in ("gd_lrs", "adam_lrs", "warmups"):
        require(list(config[field]) == sorted(set(config[field])), field, f"got {config[field]!r}",
                "list distinct values in increasing order")
    require(len(config["gd_lrs"]) == len(config["adam_lrs"]), "adam_lrs",
            f"{len(config['adam_lrs'])} Adam rates but {len(config['gd_lrs'])} GD rates",
            "give both optimizers the same number of rates (they share the `rate` index)")
    require(max(config["warmups"]) <= config["steps"], "warmups", f"got {config['warmups']!r}",
            f"use warmup lengths <= steps = {config['steps']}")
    parts = []
    for name in OPTIMIZERS:
        lrs = [float(x) for x in config[f"{name}_lrs"]]
        ds = sweep.sweep(build(name, config), grid={"warmup_steps": [float(w) for w in config["warmups"]],
                                                    "lr": lrs}, seeds=config["seeds"], name=name, **options)
        parts.append(ds.rename(lr="rate").assign_coords(rate=np.arange(len(lrs)), lr=("rate", lrs)))
    out = xr.concat(parts, dim=xr.DataArray(list(OPTIMIZERS), dims="optimizer", name="optimizer"),
                    combine_attrs="drop_conflicts")
    return out.assign_attrs({f"config_{name}": p.attrs["config"] for name, p in zip(OPTIMIZERS, parts)})


def threshold(ds, name: str, config: dict):
    """The stability threshold at the rate in force eta_t (`scheduled_lr`): 2/eta_t for GD,
    (2 + 2 b1)/((1 - b1) eta_t) for Adam: [seed, warmup_steps, rate, step]."""
    sub = ds.sel(optimizer=name)
    return optim.stability_threshold(optimizer(name, config), {"lr": sub.scheduled_lr, "b1": config["b1"]})


def edge_ratio(ds, name: str, config: dict):
    """curvature / threshold(eta_t) at the curvature records: [seed, warmup_steps, rate, step]."""
    return ds[CURVATURE[name]].sel(optimizer=name) / threshold(ds, name, config)


def stable(ds):
    """No seed diverged: [optimizer, warmup_steps, rate]."""
    return ~ds.diverged.astype(bool).any("seed")


def trained(ds, config: dict):
    """Not diverged and final loss < trained_below x initial loss, every seed: [optimizer, warmup_steps, rate]."""
    ok = ds.loss.isel(step=-1) < config["trained_below"] * ds.loss.isel(step=0)
    return (ok & ~ds.diverged.astype(bool)).all("seed")


def largest_stable(ok, lr):
    """The largest lr such that it and every smaller lr of the grid is `ok`, NaN if the
    smallest is not: [...] over `rate`."""
    run = ok.astype(int).cumprod("rate").astype(bool)
    return lr.where(run).max("rate")


def tracking(ds, name: str, config: dict) -> dict:
    """Per warmup (> 0) and rate: the median over seeds of each run's median edge ratio
    over the warmup's curvature records from the first one at the edge (ratio >= 0.9);
    the rise of eta_t over those records; whether the cell counts (see the docstring)."""
    ratio, eta = edge_ratio(ds, name, config), ds.scheduled_lr.sel(optimizer=name)
    ok = trained(ds, config).sel(optimizer=name)
    cells = {}
    for w in ds.warmup_steps.values[ds.warmup_steps.values > 0]:
        inside = ratio.sel(warmup_steps=w).where((ratio.step > 0) & (ratio.step <= w)).dropna("step", how="all")
        at_edge = (inside >= 0.9).cumsum("step") > 0
        for r in ds.rate.values:
            edge, e = inside.sel(rate=r).where(at_edge.sel(rate=r)), eta.sel(warmup_steps=w, rate=r)
            e = e.sel(step=edge.step).where(edge.notnull())
            rise = (e.max("step") / e.min("step")).min("seed")  # the seed with the shortest stretch
            counts = bool(ok.sel(warmup_steps=w, rate=r)) and bool(rise >= 2)
            cells[f"w={w:g},lr={float(ds.lr.sel(optimizer=name, rate=r)):g}"] = {"warmup_steps": float(w),
                "median_ratio_at_edge": None if edge.count() == 0 else round(float(edge.median("step").median()), 3),
                "eta_rise_at_edge": None if not np.isfinite(float(rise)) else round(float(rise), 2),
                "counts": counts}
    return cells


def summarize(ds, config: dict) -> dict:
    out, claims = {}, {}
    for name in OPTIMIZERS:
        lr, w = ds.lr.sel(optimizer=name), ds.warmup_steps.values
        best = largest_stable(stable(ds).sel(optimizer=name), lr)
        best_trained = largest_stable(trained(ds, config).sel(optimizer=name), lr)
        curv0 = ds[CURVATURE[name]].sel(optimizer=name).dropna("step", how="all")
        first = curv0.isel(step=0 if name == "gd" else 1)  # Adam's P is undefined at step 0
        step = float((lr.values[1:] / lr.values[:-1]).max()) if lr.size > 1 else 1.0
        track = tracking(ds, name, config)
        counted = [c["median_ratio_at_edge"] for c in track.values() if c["counts"]]
        by_warmup = {}
        for c in track.values():
            if c["counts"]:
                by_warmup.setdefault(f"{c['warmup_steps']:g}", []).append(c["median_ratio_at_edge"])
        b = [float(best.sel(warmup_steps=x)) if np.isfinite(float(best.sel(warmup_steps=x))) else 0.0 for x in w]
        out[name] = {
            # GD: lambda_0 at step 0; Adam: at the first record after it (P is undefined at step 0)
            "first_measured_curvature_median": round(float(first.median()), 3),
            "largest_stable_lr": {f"{x:g}": v for x, v in zip(w, b)},
            "at_grid_top": {f"{x:g}": bool(stable(ds).sel(optimizer=name, warmup_steps=x).all()) for x in w},
            "largest_trained_lr": {f"{x:g}": float(best_trained.sel(warmup_steps=x)) for x in w},
            "diverged_runs": int(ds.diverged.sel(optimizer=name).sum()),
            "diverged_step_median": {f"{x:g}": float(ds.diverged_step.sel(optimizer=name, warmup_steps=x).where(
                ds.diverged.sel(optimizer=name, warmup_steps=x).astype(bool)).median()) for x in w},
            "tracking": track, "tracking_cells_counted": len(counted),
            "tracking_ratio_range_by_warmup": {k: [min(v), max(v)] for k, v in by_warmup.items()},
        }
        if name == "gd":
            out[name]["largest_stable_lr_over_two_over_lambda0"] = {
                f"{x:g}": round(v * float(first.median()) / 2, 2) for x, v in zip(w, b)}
        label = "sharpness tracks 2/eta_t" if name == "gd" else \
            "preconditioned sharpness tracks (2 + 2 b1)/((1 - b1) eta_t)"
        claims[f"{name}: during warmup the {label} (median ratio in [0.8, 1.2], every counted cell)"] = \
            bool(counted) and all(0.8 <= c <= 1.2 for c in counted)
        claims[f"{name}: longer warmup -> larger largest stable target rate (each within one grid step of the "
               f"previous, longest >= 2x no warmup)"] = \
            all(b2 >= b1 / step * (1 - 1e-6) for b1, b2 in zip(b, b[1:])) and b[-1] >= 2 * b[0] > 0
    return {**out, "claims": claims}


def figures(ds, config: dict, out_dir) -> list[str]:
    fig, axes = plot.figure(1, 2, (11, 3.6))
    for ax, name in zip(axes, OPTIMIZERS):
        frac = ds.diverged.sel(optimizer=name).astype(float).mean("seed").transpose("warmup_steps", "rate")
        ax.imshow(frac.values, cmap="Reds", vmin=0, vmax=1, origin="lower", aspect="auto")
        lrs, best = ds.lr.sel(optimizer=name).values, largest_stable(stable(ds).sel(optimizer=name), ds.lr.sel(
            optimizer=name))
        for i, b in enumerate(best.values):
            if np.isfinite(b):
                ax.plot(int(np.argmax(lrs == b)), i, "k*", ms=9)
        ax.set_xticks(range(lrs.size), [f"{v:.2g}" for v in lrs], rotation=60, fontsize=7)
        ax.set_yticks(range(ds.sizes["warmup_steps"]), [f"{v:g}" for v in ds.warmup_steps.values])
        ax.set(xlabel="target lr", ylabel="warmup steps",
               title=f"{name}: fraction of seeds diverged (red)\n* largest stable target rate")
    paths = [plot.save(fig, f"{out_dir}/warmup_stability.png")]
    w = float(ds.warmup_steps.max())
    for name in OPTIMIZERS:
        sub = ds.sel(optimizer=name, warmup_steps=w).swap_dims(rate="lr")
        sub = sub.isel(lr=np.flatnonzero(~sub.diverged.astype(bool).any("seed").values)[::2])  # every other stable
        limit = threshold(ds, name, config).sel(warmup_steps=w).swap_dims(rate="lr").median("seed")
        curv = sub[CURVATURE[name]].dropna("step", how="all")
        refs = {lr: limit.sel(lr=lr).where(limit.step > 0) for lr in sub.lr.values}
        rows = [{"da": sub.loss, "ylabel": "train loss", "logy": True},
                {"da": curv, "ylabel": f"{CURVATURE[name]}\n(dashed: threshold at eta_t)", "refs": refs,
                 "logy": True, "ylim": (0.3 * float(curv.min()), 3 * float(curv.max()))},
                {"da": sub.scheduled_lr, "ylabel": "eta_t", "logy": True}]
        title = (f"{name}, warmup over {w:g} steps: the curvature tracks its threshold down\n"
                 f"{'-'.join(map(str, config['widths']))} {config['activation']} on {config['data']}; "
                 f"median over {ds.sizes['seed']} seeds, band: min-max")
        paths.append(plot.panels(f"{out_dir}/warmup_{name}.png", rows, hue="lr", title=title))
    return paths


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
