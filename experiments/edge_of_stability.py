"""Edge of stability: full-batch gradient descent trains at sharpness 2/eta.

Cohen, Kaur, Li, Kolter & Talwalkar 2021, "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability" (ICLR 2021). A network is trained by full-batch GD with
step size eta on the square loss L = 1/n sum_i 1/2 ||f(x_i) - y_i||^2. The sharpness
lambda_max(H) of the training-loss Hessian first rises (progressive sharpening) while it
is below 2/eta, the largest value at which GD is stable on the local quadratic model;
then it stops rising and hovers at, or just above, 2/eta, while the loss keeps
decreasing over long times, non-monotonically.

Sharpness is computed every `every` steps inside the compiled training loop by Lanczos
(20 Hessian-vector products from a random start, then 10 warm-started from the
previous top eigenvector, each solve on until its residual ||Hv - lambda v|| / lambda
is below 1e-3, at most 3x that), on the first `sharpness_examples` training examples
(all if None); the residual and the products spent are recorded with it.

Quick preset: a 1-50-50-1 tanh network on chebyshev-3-20 (20 points on [-1, 1], target
the Chebyshev polynomial T_3, one of the paper's small data sets), eta in {0.05, 0.1}:
its sharpness starts at ~13.5, below both thresholds (40 and 20), so progressive
sharpening is visible. (The one-hidden-layer 1-100-1 network does not sharpen: its
sharpness stays at ~17.5 for 5000 steps at every eta we tried, 0.01-0.08.) Paper preset: their
fc-tanh 3072-200-200-10 on the first 5000 CIFAR-10 training images with one-hot
targets; pass the data as an .npz with `x_train`, `y_train` (nothing is downloaded):
`--preset paper --set data=/path/cifar10.npz`. The paper's learning rates for that
figure are 2/30 ... 2/90 in spirit (their thresholds 2/eta of 30-90); we take
eta in {2/30, 2/50, 2/70, 2/90}.

`--preset cohen_small` is the paper's own small setting: the 1-100-1 tanh network on
chebyshev-3-20 with their initialization (`engine.init.cohen_small`: Xavier-normal,
gain 1.9 on the first layer, zero first-layer bias, no output bias), eta in {0.1, 0.2},
20000 steps (sharpness every 20); under that initialization it does sharpen to 2/eta.

The late phase is the last `late` fraction of the recorded steps. Per learning rate the
summary reports the median over seeds of the late-phase median of sharpness / (2/eta)
and the fraction of seeds within +-10%.

`schedule` (default "constant") trains with a learning-rate schedule of
`engine.schedules` whose lengths are fractions of the run (our choice): warmup over the
first 10% of the steps, a decay over the last 20% (wsd, warmup_cosine), steps every 25%
(step_decay). Then eta is the rate in force, eta_t = lr * s(t) (`scheduled_lr`), and the
threshold, the summary's ratios and the figure's dashed lines are 2/eta_t.
"""
from __future__ import annotations

import sys

from engine import analysis, data, experiment, init, models, optim, plot, probes, schedules, simulate, sweep
from engine.errors import FRACTION, POSITIVE, Range, require

NAME = "edge_of_stability"
PRESETS = {
    "quick": {"data": "chebyshev-3-20", "n_train": None, "widths": [1, 50, 50, 1], "activation": "tanh",
              "lrs": [0.05, 0.1], "seeds": 8, "steps": 5000, "every": 10, "sharpness_examples": None,
              "late": 0.5, "schedule": "constant", "init": "scaled", "output_bias": True},
    "paper": {"data": "cifar10.npz", "n_train": 5000, "widths": [3072, 200, 200, 10], "activation": "tanh",
              "lrs": [2 / 30, 2 / 50, 2 / 70, 2 / 90], "seeds": 4, "steps": 20000, "every": 50,
              "sharpness_examples": None, "late": 0.5, "schedule": "constant", "init": "scaled", "output_bias": True},
    "cohen_small": {"data": "chebyshev-3-20", "n_train": None, "widths": [1, 100, 1], "activation": "tanh",
                    "lrs": [0.1, 0.2], "seeds": 4, "steps": 20000, "every": 20, "sharpness_examples": None,
                    "late": 0.5, "schedule": "constant", "init": "cohen_small", "output_bias": False},
}
INITS = {"scaled": init.scaled, "cohen_small": init.cohen_small}
RANGES = {"n_train": Range(1, integer=True, none_ok=True), "lrs": POSITIVE,
          "sharpness_examples": Range(1, integer=True, none_ok=True), "late": FRACTION}


def build(config: dict) -> simulate.Simulation:
    require(config.get("init", "scaled") in INITS, "init", f"unknown value {config.get('init')!r}",
            f"use one of {', '.join(INITS)}")
    model = models.mlp(tuple(config["widths"]), config["activation"], output_bias=config.get("output_bias", True))
    d = data.named(config["data"], config["n_train"])
    require(d.x.shape[1] == config["widths"][0], "widths",
            f"the data have {d.x.shape[1]} inputs but widths[0] = {config['widths'][0]}",
            f"use widths starting with {d.x.shape[1]}")
    require(d.y.shape[1] == config["widths"][-1], "widths",
            f"the data have {d.y.shape[1]} outputs but widths[-1] = {config['widths'][-1]}",
            f"use widths ending with {d.y.shape[1]}")
    sharp = probes.sharpness(iters=20, warm_iters=10, examples=config["sharpness_examples"])
    return simulate.simulation(model, d, "mse", optim.gd(schedule=lr_schedule(config)),
                               INITS[config.get("init", "scaled")](model),
                               steps=config["steps"], every=config["every"], probes=("loss", "loss_change", sharp))


def lr_schedule(config: dict):
    """config["schedule"], its lengths fractions of the run (None: a constant rate)."""
    n, name = config["steps"], config.get("schedule", "constant")
    lengths = {"warmup_steps": 0.1 * n, "decay_start": 0.8 * n, "decay_steps": 0.2 * n, "decay_every": 0.25 * n}
    return None if name == "constant" else schedules.schedule(
        name, **{k: v for k, v in lengths.items() if k in schedules.schedule(name).defaults})


def run_sweep(config: dict, **options):
    return sweep.sweep(build(config), grid={"lr": [float(x) for x in config["lrs"]]}, seeds=config["seeds"],
                       **options)


def threshold(ds):
    """2/eta per learning rate: [lr]; under a schedule 2/eta_t: [seed, lr, step]."""
    return 2.0 / (ds.scheduled_lr if "scheduled_lr" in ds else ds.lr)


def late_ratio(ds, config: dict):
    """Per run, the late-phase median of sharpness / (2/eta): [seed, lr]."""
    return (analysis.late_phase(ds, config["late"]).sharpness / threshold(ds)).median("step")


def edge_index(ds, level: float = 0.9):
    """Index of the first record at which sharpness reaches `level` * 2/eta, and
    whether it ever does: ([seed, lr], [seed, lr])."""
    reached = ds.sharpness >= level * threshold(ds)
    return reached.argmax("step"), reached.any("step")


def summarize(ds, config: dict) -> dict:
    ratio = late_ratio(ds, config)
    within = (abs(ratio - 1) <= 0.1)
    first, reached = edge_index(ds)
    at_edge = ds.step.isel(step=first).where(reached)
    loss_at_edge = ds.loss.isel(step=first).where(reached)
    final_loss = ds.loss.isel(step=-1)
    rises = (analysis.late_phase(ds, config["late"]).loss_change > 0).mean("step")  # the next step raises the loss
    per_lr = {}
    for lr in ds.lr.values:
        sel = dict(lr=lr)
        per_lr[f"{lr:g}"] = {
            "two_over_eta": round(2 / float(lr), 4),
            "initial_sharpness_median": round(float(ds.sharpness.isel(step=0).sel(sel).median()), 4),
            "late_sharpness_over_threshold_median": round(float(ratio.sel(sel).median()), 4),
            "fraction_of_seeds_within_10pct": round(float(within.sel(sel).mean()), 3),
            "edge_reached_step_median": float(at_edge.sel(sel).median()),
            "loss_at_edge_median": float(loss_at_edge.sel(sel).median()),
            "final_loss_median": float(final_loss.sel(sel).median()),
            "late_fraction_of_steps_raising_the_loss_median": round(float(rises.sel(sel).median()), 3),
            "max_eigen_residual": float(ds.eigen_residual.sel(sel).max()),
        }
    v = list(per_lr.values())
    claims = {
        "progressive sharpening: initial sharpness < 0.9 * 2/eta for every eta":
            all(x["initial_sharpness_median"] < 0.9 * x["two_over_eta"] for x in v),
        "late sharpness within +-10% of 2/eta (median over seeds) for every eta":
            all(abs(x["late_sharpness_over_threshold_median"] - 1) <= 0.1 for x in v),
        "the loss keeps falling at the edge: final loss < loss when the edge is reached":
            all(x["final_loss_median"] < x["loss_at_edge_median"] for x in v),
        "non-monotone: at the edge >= 10% of steps raise the loss, for every eta":
            all(x["late_fraction_of_steps_raising_the_loss_median"] >= 0.1 for x in v),
    }
    return {"per_lr": per_lr, "diverged_runs": int(ds.diverged.sum()), "claims": claims}


def figures(ds, config: dict, out_dir) -> list[str]:
    limit = threshold(ds)
    refs = {lr: limit.sel(lr=lr).median("seed") if "step" in limit.dims else 2 / float(lr) for lr in ds.lr.values}
    top = 2 / float(ds.lr.min()) * 1.6
    rows = [{"da": ds.loss, "ylabel": "train loss", "logy": True},
            {"da": ds.sharpness, "ylabel": "sharpness  (dashed: 2/eta)", "refs": refs, "ylim": (0, top)}]
    title = (f"GD on {config['data']}, {'-'.join(map(str, config['widths']))} {config['activation']}: "
             f"edge of stability (Cohen et al. 2021)\nmedian over {ds.sizes['seed']} seeds, band: min-max")
    return [plot.panels(f"{out_dir}/edge_of_stability.png", rows, hue="lr", title=title)]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
