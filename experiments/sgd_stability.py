"""SGD stability: batch sharpness at 2/eta, lambda_max below it, and the bounds on
non-uniformity and ||H||_F, swept over batch size x learning rate x seeds.

Papers. Wu, Ma & E 2018 ("How SGD selects the global minima in over-parameterized
learning", NeurIPS): a global minimum is linearly stable for SGD (rate eta, batch B, n
examples) only if its sharpness lambda_max(H) <= 2/eta and its non-uniformity
s = sqrt(lambda_max((1/n) sum_i H_i^2 - H^2)) <= sqrt(B (n-1)/(n-B)) / eta (the
without-replacement form of their ~sqrt(B)/eta; `engine.probes.gradient_noise`).
Wu, Wang & Su 2022 ("The alignment property of SGD noise and how it helps select flat
minima", NeurIPS): for square loss a linearly stable minimum has
||H||_F <= O(sqrt(B)/eta); the constant is sqrt(1/mu), mu their alignment factor of the
SGD noise with H, which they measure O(1). We check ||H||_F <= sqrt(B)/eta (constant 1)
and report ||H||_F eta / sqrt(B), the constant the run implies. Andreyev & Beneventano
2024 ("Edge of Stochastic Stability"): under SGD the batch sharpness
E_B[g_B^T H_B g_B / ||g_B||^2] rises to 2/eta and stays there, while the full-batch
lambda_max plateaus below 2/eta, lower for smaller B.

Method. An MLP trained by plain minibatch SGD (constant eta, each epoch a fresh
permutation, `engine.simulate.minibatch`) on the square loss 1/n sum_i 1/2 ||f(x_i) -
y_i||^2 with one-hot targets (square loss, as both Wu papers assume). Batch size is a
static axis (it sets shapes: one program per B); eta and seeds are traced (one program
per B for all of them). Recorded inside the compiled loop every `every` steps: the loss,
the batch sharpness with its standard error over `batches` fresh minibatches of size B
(`probes.batch_sharpness`). Every `curvature_every` steps: lambda_max by Lanczos
(`probes.sharpness`) and ||H||_F by Hutchinson, sqrt of the mean of ||H z||^2 over
`frobenius_samples` Rademacher z (`probes.hessian_frobenius`). Every `noise_every`
steps (the costly one): s by Lanczos on the operator mean_b (H_b - H)^2 over
`noise_batches` minibatches (`probes.gradient_noise`; lambda_max of a sample mean is
biased upward by O(1/noise_batches), so we take more batches here than for the batch
sharpness; on the sanity preset 8 batches instead of 32 changed s by < 5%). All three are
recorded at the final step.

The authors' setting (their code, github.com/arseniqum/edge-of-stochastic-stability:
training.py and utils/nets.py, read for this module). An MLP with two hidden ReLU
layers of 512 (their "mlp"), weights He-normal (kaiming_normal_, fan_in) times
init_scale 0.2, biases zero; the square loss summed over the 10 one-hot outputs and
averaged over examples (their SquaredLoss, no 1/2); 8192 CIFAR-10 training images
(standardized per channel); plain SGD, e.g. batch 8, lr 0.01, 150000 steps (~150
epochs). CIFAR-10 is hard for an MLP: the loss stays up for a long time while the
curvature grows, so training spends most of its steps at the edge.

Choices the papers leave open, ours. (a) Our loss carries the 1/2 (`losses.mse`), so
our lr eta is their 2 eta' (the Hessian halves, 2/eta is the same edge). (b) Data, CPU
scale (quick): all 1797 of scikit-learn's digits (shipped; nothing downloaded), with
their labels shuffled once (`labels="shuffled"`, data seed 0; class counts kept). The
true-label digits do not stand in for CIFAR-10: an MLP fits them before the edge (see
"Tried" below); with random labels the network must memorize, as an MLP largely does
on 8192 CIFAR images, so the loss stays up while the curvature rises, the regime the
paper trains in. (c) Network: theirs, narrowed to 64-256-256-10 ReLU (`init="he"`,
`init_scale` 0.2; `init.standard(model, "he")`, biases zero). (d) Batch sizes 8 (their
example) and 32, eta 0.1 and 0.2, chosen before the runs as a factor-2 grid below the
B = 8 divergence we had seen on true-label digits at eta 0.4-0.5; 8000 steps (36 and
142 epochs; a first 3000-step try, B=8 at eta 0.05 and 0.2, was still sharpening at
0.04 and 0.35 of 2/eta); one seed (cost). Batch sizes below n only (the minibatch probes are
undefined under full batch; `edge_of_stability` is the GD reference). "Late" is the
last `late` fraction of the records (0.25, fixed before the runs: the runs sharpen for
their first half). A (B, eta) "trains" when no seed diverged and every seed's final
loss is below 0.1x its initial loss; claims are judged on those only, and the summary
says how many.

Claims, from the records. (1) EoSS: per (B, eta), the late batch sharpness averaged over
records and seeds, over 2/eta, is within 10% of 1 allowing 2 standard errors (the
recorded per-record errors combined: sqrt(sum se^2) / count). (2) The late full-batch
lambda_max (median over records and seeds) is below 2/eta, and (3) it increases with B
at every eta (judged where at least two batch sizes train). (4) Every run's final
s <= sqrt(B (n-1)/(n-B)) / eta and (5) final ||H||_F <= sqrt(B)/eta.

Quick preset, measured (~5 min on 2 shared cores, 2 min of CPU): only (B=32, eta=0.2)
trains (final loss 0.011 from 0.50). There the batch sharpness rises from 0.12 of 2/eta
to the edge by step ~4300 and stays: late 1.04 of 2/eta (standard error 0.007), so (1)
holds, on that one cell; lambda_max plateaus just below, 0.96 of 2/eta, (2) holds.
(3) is False because it cannot be judged (one B trains per eta); among the runs that
did not diverge, lambda_max / (2/eta) at eta = 0.1 is 0.29 at B=8 and 0.92 at B=32,
lower for the smaller batch as the paper says. (4) and (5) fail at (32, 0.2): s 1.35x
and ||H||_F 1.43x their bounds. The other cells: (B=32, eta=0.1) is still sharpening when the steps
run out (late batch sharpness 0.77 of 2/eta, 0.89 at the last records; loss 0.056 =
0.11x initial); (B=8, eta=0.1) still sharpening (0.43; loss 0.14); (B=8, eta=0.2)
reaches the edge at step ~5700 (0.97-0.99 of 2/eta) and diverges within 500 steps (loss
0.17 -> 0.61, NaN at step 6200), where the paper's runs stay at the edge.

Paper preset: the authors' setting itself, for an accelerator: CIFAR-10 as cifar10.npz
(x_train [n, 32, 32, 3], y_train; `data.named` flattens and standardizes per pixel,
they per channel), 8192 images, 3072-512-512-10 ReLU, He x 0.2, eta 0.01-0.04 (their
0.005-0.02), B 8 ... 256, 150000 steps.

Tried, all reported. (i) `--preset sanity`, the issue's CPU sanity run (64 true-label
digits, 64-32-32-10 tanh, `init.scaled`, B {4, 16, 32} x eta {0.05, 0.2} x 2 seeds,
1000 steps; ~90 s): every cell trains and is fitted (final loss 3e-4 ... 6e-3) before
the edge: late batch sharpness 0.05-0.19 of 2/eta at eta 0.05 and 0.31-0.65 at 0.2, (1)
fails; lambda_max 0.17-0.19 and 0.41, 0.65, 0.73 of 2/eta for B = 4, 16, 32, (2) and
(3) hold; (4) fails at (4, 0.2) (1.23x), (5) at eta 0.2 for B = 4 and 16 (1.87x, 1.29x).
(ii) The quick network on all 1797 true-label digits, B {8, 32, 128} x eta {0.1, 0.2,
0.4}, 4000 steps, one seed: every non-diverged cell is fitted (final loss 6e-4 ...
6e-3), the batch sharpness never reaches the edge (late 0.07-0.68 of 2/eta, largest at
B=32, eta 0.4; standard errors <= 0.02), (1) fails; lambda_max / (2/eta) stays below 1
and rises with B at every eta (0.15, 0.20, 0.21 at eta 0.1; 0.25, 0.35, 0.43 at 0.2;
0.57, 0.75 for B = 32, 128 at 0.4), (2) and (3) hold; (4) and (5) hold (<= 0.99x and
<= 0.67x the bounds); (B=8, eta=0.4) diverges at step ~650. Before it, B=8 alone for
2000-3000 steps: eta 0.05 and 0.2 fitted (late 0.08-0.16 and 0.44-0.59 of 2/eta), 0.5
diverged, 1.0 did not train (loss 0.29 after 3000 steps, batch sharpness 0.7-9.6x).
(iii) The quick preset at eta 0.1 run twice as long (16000 steps; every 200, curvature
every 2000), to see whether its still-sharpening cells get there: (B=32) reaches 0.9
of 2/eta at step ~8600 and stays at or above the edge (late 1.09, standard error 0.007,
1.16-1.26 over the last records), lambda_max 0.99 of 2/eta: (1) and (2) hold, the
judged cell trains (loss 0.022); (B=8) reaches it at step ~13000 (0.97-1.04) and, as at
eta 0.2, diverges there (loss 0.033 -> 0.125, NaN at step 13800). At this scale B = 8
does not stay at the edge at either eta: the one departure from the paper we see.
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import COUNT, FRACTION, POSITIVE, Range, require

NAME = "sgd_stability"
PRESETS = {
    "quick": {"data": "digits", "labels": "shuffled", "n_train": 1797, "widths": [64, 256, 256, 10],
              "activation": "relu", "init": "he", "init_scale": 0.2, "batch_sizes": [8, 32], "lrs": [0.1, 0.2],
              "seeds": 1, "steps": 8000, "every": 100, "curvature_every": 1000, "noise_every": 8000, "batches": 8,
              "noise_batches": 16, "frobenius_samples": 8, "late": 0.25},
    "sanity": {"data": "digits", "labels": "true", "n_train": 64, "widths": [64, 32, 32, 10], "activation": "tanh",
               "init": "scaled", "init_scale": 1.0, "batch_sizes": [4, 16, 32], "lrs": [0.05, 0.2], "seeds": 2,
               "steps": 1000, "every": 20, "curvature_every": 100, "noise_every": 500, "batches": 8,
               "noise_batches": 32, "frobenius_samples": 16, "late": 0.5},
    "paper": {"data": "cifar10.npz", "labels": "true", "n_train": 8192, "widths": [3072, 512, 512, 10],
              "activation": "relu", "init": "he", "init_scale": 0.2, "batch_sizes": [8, 16, 32, 64, 128, 256],
              "lrs": [0.01, 0.02, 0.04],
              "seeds": 2, "steps": 150000, "every": 500, "curvature_every": 5000, "noise_every": 50000,
              "batches": 16, "noise_batches": 64, "frobenius_samples": 32, "late": 0.25},
}
INITS = ("scaled", "he")
LABELS = ("true", "shuffled")
RANGES = {"n_train": Range(2, integer=True), "init_scale": POSITIVE, "batch_sizes": COUNT, "lrs": POSITIVE,
          "every": COUNT, "curvature_every": COUNT, "noise_every": COUNT, "batches": Range(2, integer=True),
          "noise_batches": Range(2, integer=True), "frobenius_samples": Range(2, integer=True), "late": FRACTION}


def build(config: dict):
    """batch_size -> Simulation (a static axis: B sets the minibatch shapes)."""
    d = data.named(config["data"], config["n_train"])
    require(config["labels"] in LABELS, "labels", f"unknown value {config['labels']!r}",
            f"use one of {', '.join(LABELS)}")
    if config["labels"] == "shuffled":  # random labels: the targets permuted once (data seed 0), class counts kept
        d = d._replace(y=d.y[np.random.default_rng(0).permutation(d.n)])
    widths = tuple(config["widths"])
    require(d.x.shape[1] == widths[0] and d.y.shape[1] == widths[-1], "widths",
            f"the data have {d.x.shape[1]} inputs and {d.y.shape[1]} outputs, widths are {list(widths)}",
            f"use widths from {d.x.shape[1]} to {d.y.shape[1]}")
    for B in config["batch_sizes"]:
        require(B < d.n, "batch_sizes", f"{B} is not below the {d.n} training examples",
                f"use batch sizes below {d.n} (the minibatch probes are undefined under full batch)")
    for field in ("curvature_every", "noise_every"):
        require(config[field] % config["every"] == 0 and config["steps"] % config[field] == 0, field,
                f"{config[field]} must divide steps ({config['steps']}) and be a multiple of every "
                f"({config['every']})", "so that it is measured at the final step")
    require(config["init"] in INITS, "init", f"unknown value {config['init']!r}", f"use one of {', '.join(INITS)}")
    model = models.mlp(widths, config["activation"])
    scheme = init.scaled(model) if config["init"] == "scaled" else init.standard(model, "he")
    theta0 = scheme._replace(defaults={"init_scale": float(config["init_scale"])})
    curv, noise = config["curvature_every"], config["noise_every"]
    measured = ("loss", probes.batch_sharpness(config["batches"]), probes.every(curv, probes.sharpness()),
                probes.every(curv, probes.hessian_frobenius(config["frobenius_samples"])),
                probes.every(noise, probes.gradient_noise(config["noise_batches"])))

    def at(batch_size):
        return simulate.simulation(model, d, "mse", optim.gd(), theta0, steps=config["steps"],
                                   every=config["every"], batch_size=int(batch_size), probes=measured)
    return at


def run_sweep(config: dict, **options):
    return sweep.sweep(build(config), grid={"lr": [float(x) for x in config["lrs"]]},
                       static={"batch_size": [int(b) for b in config["batch_sizes"]]}, seeds=config["seeds"],
                       **options)


def bounds(ds, n: int) -> xr.Dataset:
    """The linear-stability bounds per (batch_size, lr): sharpness 2/eta; non-uniformity
    sqrt(B (n-1)/(n-B))/eta (Wu, Ma & E 2018); ||H||_F sqrt(B)/eta (Wu, Wang & Su 2022,
    constant 1)."""
    B, eta = ds.batch_size, ds.lr
    return xr.Dataset({"sharpness": (2 / eta).broadcast_like(B), "non_uniformity": np.sqrt(B * (n - 1) / (n - B)) / eta,
                       "hessian_frobenius": np.sqrt(B) / eta})


def trains(ds) -> xr.DataArray:
    """[batch_size, lr]: no seed diverged and every final loss < 0.1x the initial loss."""
    fell = ds.loss.isel(step=-1) < 0.1 * ds.loss.isel(step=0)
    return (fell & ~ds.diverged).all("seed")


def summarize(ds, config: dict) -> dict:
    n = int(config["n_train"])
    limit = bounds(ds, n)
    late = analysis.late_phase(ds, config["late"])
    final = ds.isel(step=-1)
    ok = trains(ds)
    cells = {}
    for B in ds.batch_size.values:
        for lr in ds.lr.values:
            at = dict(batch_size=B, lr=lr)
            bs, se = late.batch_sharpness.sel(at), late.batch_sharpness_error.sel(at)
            count = int(np.isfinite(bs).sum())
            edge = float(limit.sharpness.sel(at))
            cells[f"B={B:d}, lr={lr:g}"] = {
                "batch_size": int(B), "lr": float(lr), "trains": bool(ok.sel(at)),
                "diverged": bool(ds.diverged.sel(at).any()),
                "two_over_eta": round(edge, 4),
                "late_batch_sharpness_over_threshold": round(float(bs.mean()) / edge, 4),
                "late_batch_sharpness_standard_error_over_threshold":
                    round(float(np.sqrt((se ** 2).sum())) / max(count, 1) / edge, 5),
                "late_sharpness_over_threshold": round(float(late.sharpness.sel(at).median()) / edge, 4),
                "final_non_uniformity_over_bound": round(float(
                    (final.non_uniformity.sel(at) / limit.non_uniformity.sel(at)).max()), 4),
                "final_hessian_frobenius_over_bound": round(float(
                    (final.hessian_frobenius.sel(at) / limit.hessian_frobenius.sel(at)).max()), 4),
                "final_loss_median": float(final.loss.sel(at).median()),
            }
    good = [c for c in cells.values() if c["trains"]]
    within = lambda c: abs(c["late_batch_sharpness_over_threshold"] - 1) - \
        2 * c["late_batch_sharpness_standard_error_over_threshold"] <= 0.1
    rising = []
    for lr in ds.lr.values:
        row = sorted((c["batch_size"], c["late_sharpness_over_threshold"]) for c in good if c["lr"] == float(lr))
        rising.append(len(row) >= 2 and all(a[1] < b[1] for a, b in zip(row, row[1:])))
    claims = {
        "EoSS: late batch sharpness within 10% of 2/eta (2 standard errors allowed) for every (B, eta) that trains":
            bool(good) and all(map(within, good)),
        "late full-batch lambda_max below 2/eta for every (B, eta) that trains":
            bool(good) and all(c["late_sharpness_over_threshold"] < 1 for c in good),
        "late lambda_max increases with B at every eta": all(rising),
        "final non-uniformity <= sqrt(B (n-1)/(n-B))/eta (Wu, Ma & E 2018) for every run that trains":
            bool(good) and all(c["final_non_uniformity_over_bound"] <= 1 for c in good),
        "final ||H||_F <= sqrt(B)/eta (Wu, Wang & Su 2022, constant 1) for every run that trains":
            bool(good) and all(c["final_hessian_frobenius_over_bound"] <= 1 for c in good),
    }
    judged = [name for name, c in cells.items() if c["trains"]]
    return {"cells": cells, "diverged_runs": int(ds.diverged.sum()), "judged_cells": judged, "claims": claims,
            "notes": [f"claims judged on {len(judged)} of {len(cells)} (B, eta) cells, those that train"]
            + notes(good) + by_batch(cells)}


def by_batch(cells: dict) -> list[str]:
    """Late lambda_max / (2/eta) against B at each eta over every cell that did not
    diverge, trained or not (claim 3 itself is judged on the cells that train)."""
    lines = []
    for lr in sorted({c["lr"] for c in cells.values()}):
        row = sorted((c["batch_size"], c["late_sharpness_over_threshold"]) for c in cells.values()
                     if c["lr"] == lr and not c["diverged"])
        lines.append(f"eta={lr:g}, every run that did not diverge: late lambda_max / (2/eta) by B: "
                     + ", ".join(f"{b}: {v:.3g}" for b, v in row))
    return lines


def notes(good: list) -> list[str]:
    """The numbers behind each claim, in words, for the (B, eta) that train."""
    if not good:
        return ["no (B, eta) trains: every claim is False"]
    def span(key):
        lo, hi = min(good, key=lambda c: c[key]), max(good, key=lambda c: c[key])
        return (f"{lo[key]:.3g} (B={lo['batch_size']}, eta={lo['lr']:g}) to "
                f"{hi[key]:.3g} (B={hi['batch_size']}, eta={hi['lr']:g})")
    return [f"late batch sharpness / (2/eta): {span('late_batch_sharpness_over_threshold')}",
            f"late lambda_max / (2/eta): {span('late_sharpness_over_threshold')}",
            f"final non-uniformity / its bound: {span('final_non_uniformity_over_bound')}",
            f"final ||H||_F / (sqrt(B)/eta), the constant the run implies: "
            f"{span('final_hessian_frobenius_over_bound')}"]


def figures(ds, config: dict, out_dir) -> list[str]:
    limit, paths = bounds(ds, int(config["n_train"])), []
    for lr in ds.lr.values:
        one = ds.sel(lr=lr)
        curv = one[["sharpness", "hessian_frobenius"]].dropna("step", how="all")
        edge = {B: 2 / float(lr) for B in ds.batch_size.values}
        rows = [{"da": one.loss, "ylabel": "train loss", "logy": True},
                {"da": one.batch_sharpness, "ylabel": "batch sharpness\n(dashed: 2/eta)", "refs": edge},
                {"da": curv.sharpness, "ylabel": "lambda_max\n(dashed: 2/eta)", "refs": edge},
                {"da": curv.hessian_frobenius, "ylabel": "||H||_F\n(dashed: sqrt(B)/eta)", "logy": True,
                 "refs": {B: float(limit.hessian_frobenius.sel(batch_size=B, lr=lr)) for B in ds.batch_size.values}}]
        title = (f"SGD on {config['n_train']} {config['data']} ({config['labels']} labels), "
                 f"{'-'.join(map(str, config['widths']))} {config['activation']}, {config['init']} init x "
                 f"{config['init_scale']:g}, lr = {lr:g}\nmedian over {ds.sizes['seed']} seeds, band: min-max")
        paths.append(plot.panels(f"{out_dir}/sgd_stability_lr{lr:g}.png", rows, hue="batch_size", title=title,
                                 logx=True))
    return paths


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
