"""Warmup-stable-decay in a river valley: at a large constant rate SGD moves along the
river while bouncing on the hillsides; the decay drops it to the river floor.

Wen, Li, Liang, Duan, Ma & Tian 2024, "Understanding Warmup-Stable-Decay Learning
Rates: A River Valley Loss Landscape Perspective". Their picture: the loss is a valley
with steep hillsides and a slowly descending river at its floor. The stable phase's
large rate makes fast progress along the river, while SGD noise keeps the iterate up
on the hills, so the loss sits a gap above the river; the decay takes the iterate down
to the floor, and the gap disappears within a short time.

The toy (our construction; the paper's toy is described, not given as code). The
parameters are theta = (u, v), u in R along the river and v in R^d across it; the
full-batch loss is
    L(u, v) = l(u) + 1/2 sum_j lambda_j v_j^2,    l(u) = softplus(-u) = log(1 + e^-u),
a river whose slope -sigmoid(-u) flattens as u grows (progress ~ log t, like a
language model's loss), and hills of curvatures lambda_j log-spaced in
[lambda_min, lambda_max]. SGD noise comes from the examples: example i (of n) has
the loss l_i = L(u, v) + sigma xi_i . v, with xi_i [d] fixed standard Gaussian vectors
centred and whitened over the n examples (so their mean is exactly 0 and the
full-batch loss is exactly L). A minibatch of B then has the gradient of L plus
sigma mean_B xi across the river only. The recorded `loss` is L; `river_loss` is
l(u) and `hill_loss` the gap L - l(u) = 1/2 sum lambda_j v_j^2.

Prediction for the gap at a constant rate eta (linear stability of each hill
direction; minibatches without replacement, so the noise variance per coordinate is
sigma^2 (n - B) / (B (n - 1))): E[v_j^2] = eta sigma_B^2 / (lambda_j (2 - eta lambda_j)),
so the gap is sum_j eta sigma_B^2 / (2 (2 - eta lambda_j)): it grows with eta, about
linearly while eta lambda_max << 2. The summary reports measured / predicted. The
prediction takes the minibatches as independent; ours reshuffle each epoch, so the
batch means of one epoch sum to exactly 0, and a hill direction slower than an epoch
(1 / (eta lambda_j) > n / B steps) sees less noise: measured / predicted is 0.57, 0.73,
0.85 at eta 0.025, 0.05, 0.1 on the quick preset, nearer 1 where eta lambda is large.

Schedules (`engine.schedules`, a static axis `schedule`): "wsd" (the peak rate until
80% of the run, then a linear decay to `final_lr_fraction` over the last 20%) against
"cosine" (from the peak down to the same final fraction over the whole run), same
peak rates (traced, one program each) and seeds, no warmup (the toy starts on the
river, with v = 0).

Claims (medians over seeds): (1) in the stable phase (the second half of it, before
the decay) the gap grows with eta, for every pair of rates; (2) the decay removes
it: at the end the gap is below a tenth of its stable-phase level, for every rate;
(3) WSD ends at a lower loss than the cosine schedule of the same length and peak,
for every rate (and further along the river: reported); (4) so does the small
network, in training loss.

Quick preset (2-core CPU, ~20 s): d = 8, lambda 1-10, sigma 1, n = 256, B = 8, eta in
{0.025, 0.05, 0.1}, 4000 steps, 8 seeds. Measured (medians): stable-phase gaps 0.0036,
0.0100, 0.0271; at the end 2.3e-5, 7.1e-5, 2.3e-4 (below 1% of them); final losses WSD
0.0115, 0.0057, 0.0030 against cosine 0.0210, 0.0103, 0.0051, WSD further along the
river (u 4.46-5.87 against 3.85-5.28), so these claims hold. During the stable
phase the largest rate has the highest loss (its gap dominates) and ends lowest.

The small network beside the toy (claim 4): an MLP 64-32-10 tanh on 512 digits, MSE,
SGD batch 16, the same two schedules, eta in {0.1, 0.3}, 3000 steps, 4 seeds (a second
sweep, ~15 s): final training loss WSD 0.032 / 0.019 against cosine 0.047 / 0.026,
with the drop at the decay visible at eta 0.3. Not done: the cooldown-stage analysis
of the second paper (Training Dynamics of the Cooldown Stage in WSD).
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from engine import data, experiment, init, models, optim, plot, probes, schedules, simulate, sweep
from engine.errors import POSITIVE, Range, require

NAME = "wsd_river_valley"
PRESETS = {
    "quick": {"dim": 8, "lambda_min": 1.0, "lambda_max": 10.0, "sigma": 1.0, "n": 256, "batch_size": 8,
              "lrs": [0.025, 0.05, 0.1], "final_lr_fraction": 0.0, "decay_fraction": 0.2, "seeds": 8,
              "steps": 4000, "every": 20, "data_seed": 0,
              "network_widths": [64, 32, 10], "network_n": 512, "network_batch_size": 16, "network_lrs": [0.1, 0.3],
              "network_steps": 3000, "network_seeds": 4},
    "paper": {"dim": 32, "lambda_min": 1.0, "lambda_max": 100.0, "sigma": 1.0, "n": 4096, "batch_size": 16,
              "lrs": [0.0025, 0.005, 0.01, 0.015], "final_lr_fraction": 0.0, "decay_fraction": 0.2, "seeds": 32,
              "steps": 40000, "every": 100, "data_seed": 0,
              "network_widths": [64, 200, 200, 10], "network_n": None, "network_batch_size": 32,
              "network_lrs": [0.05, 0.1, 0.2, 0.4], "network_steps": 20000, "network_seeds": 8},
}
RANGES = {"dim": Range(1, integer=True), "lambda_min": POSITIVE, "lambda_max": POSITIVE, "sigma": Range(0),
          "n": Range(2, integer=True), "batch_size": Range(1, integer=True), "lrs": POSITIVE,
          "final_lr_fraction": Range(0, 1), "decay_fraction": Range(0, 1, lo_open=True, hi_open=True),
          "data_seed": Range(0, integer=True), "network_n": Range(2, integer=True, none_ok=True),
          "network_batch_size": Range(1, integer=True), "network_lrs": POSITIVE, "network_steps": Range(10, integer=True),
          "network_seeds": Range(1, integer=True)}
SCHEDULES = ("wsd", "cosine")


def curvatures(config: dict) -> np.ndarray:
    """lambda_j, j = 1..d, log-spaced in [lambda_min, lambda_max]: [d]."""
    return np.geomspace(config["lambda_min"], config["lambda_max"], config["dim"])


def river(u):
    """l(u) = softplus(-u): the river's floor."""
    return jax.nn.softplus(-u)


def valley(config: dict) -> models.Model:
    """The toy as a model: params {"u": [], "v": [d]} (both 0 at init); apply(params,
    xi [m, d]) -> [m, 1], the per-example losses l(u) + 1/2 sum lambda v^2 + sigma xi.v."""
    lam, sigma, d = jnp.asarray(curvatures(config), jnp.float32), config["sigma"], config["dim"]

    def apply(params, xi):
        base = river(params["u"]) + 0.5 * jnp.sum(lam * params["v"] ** 2)
        return (base + sigma * xi @ params["v"])[:, None]
    return models.Model(lambda key: {"u": jnp.zeros(()), "v": jnp.zeros((d,))}, apply, name=f"river_valley_d{d}")


def noise(config: dict) -> data.Dataset:
    """xi_i [n, d]: standard Gaussian, centred and whitened over the n examples (mean 0,
    covariance I exactly), targets unused (zeros)."""
    require(config["n"] > config["dim"], "n", f"{config['n']} examples cannot whiten {config['dim']} directions",
            f"use n > dim = {config['dim']}")
    xi = np.random.default_rng(config["data_seed"]).standard_normal((config["n"], config["dim"]))
    xi -= xi.mean(0)
    xi = xi @ np.linalg.inv(np.linalg.cholesky(np.cov(xi.T, bias=True))).T
    return data.Dataset(jnp.asarray(xi, jnp.float32), jnp.zeros((config["n"], 1), jnp.float32))


def mean_output(y_pred, y):
    """The mean over examples of the per-example losses the model returns."""
    return jnp.mean(y_pred)


def lr_schedule(name: str, config: dict, steps: int | None = None) -> schedules.Schedule:
    n, f = float(steps or config["steps"]), config["final_lr_fraction"]
    if name == "wsd":
        return schedules.wsd(decay_start=(1 - config["decay_fraction"]) * n,
                             decay_steps=config["decay_fraction"] * n, final_lr_fraction=f)
    return schedules.warmup_cosine(decay_steps=n, final_lr_fraction=f)


def build(config: dict):
    """schedule name -> Simulation."""
    require(config["batch_size"] < config["n"], "batch_size", f"{config['batch_size']} of {config['n']} examples "
            "is full batch: no SGD noise", f"use a batch_size below n = {config['n']}")
    require(config["lambda_min"] <= config["lambda_max"], "lambda_min", "is above lambda_max", "swap them")
    model, d = valley(config), noise(config)
    measured = (probes.scalar("river_loss", lambda s: river(s.params["u"])),
                probes.scalar("hill_loss", lambda s: mean_output(s.predict(s.params, s.data.x), None)
                              - river(s.params["u"])),
                probes.scalar("river_position", lambda s: s.params["u"]))

    def at(schedule):
        require(schedule in SCHEDULES, "schedule", f"unknown value {schedule!r}", f"use {', '.join(SCHEDULES)}")
        return simulate.simulation(model, d, mean_output, optim.gd(schedule=lr_schedule(schedule, config)),
                                   init.scaled(model), steps=config["steps"], every=config["every"],
                                   probes=("loss", *measured), batch_size=config["batch_size"])
    return at


def network(config: dict):
    """schedule name -> Simulation: the small network beside the toy, an MLP (tanh) on
    the digits with MSE on one-hot targets, minibatch SGD, the same two schedules."""
    model = models.mlp(tuple(config["network_widths"]), "tanh")
    d = data.digits(config["network_n"])
    require(config["network_batch_size"] < d.n, "network_batch_size", f"is not below the {d.n} examples",
            f"use a batch size below {d.n}")
    steps = config["network_steps"]

    def at(schedule):
        return simulate.simulation(model, d, "mse", optim.gd(schedule=lr_schedule(schedule, config, steps)),
                                   init.scaled(model), steps=steps, every=max(1, steps // 60), probes=("loss",),
                                   batch_size=config["network_batch_size"])
    return at


def run_sweep(config: dict, **options):
    toy = sweep.sweep(build(config), grid={"lr": [float(x) for x in config["lrs"]]},
                      static={"schedule": list(SCHEDULES)}, seeds=config["seeds"], name="toy", **options)
    net = sweep.sweep(network(config), grid={"lr": [float(x) for x in config["network_lrs"]]},
                      static={"schedule": list(SCHEDULES)}, seeds=config["network_seeds"], name="network", **options)
    net = net.rename(lr="network_lr", step="network_step", seed="network_seed")
    return toy.assign(network_loss=net.loss, network_diverged=net.diverged)


def predicted_gap(config: dict, lr) -> float:
    """sum_j eta sigma_B^2 / (2 (2 - eta lambda_j)), sigma_B^2 = sigma^2 (n - B) / (B (n - 1))."""
    n, b = config["n"], config["batch_size"]
    var = config["sigma"] ** 2 * (n - b) / (b * (n - 1))
    return float(np.sum(lr * var / (2 * (2 - lr * curvatures(config)))))


def summarize(ds, config: dict) -> dict:
    steps = config["steps"]
    decay_start = (1 - config["decay_fraction"]) * steps
    wsd = ds.sel(schedule="wsd")
    stable = wsd.sel(step=(wsd.step >= decay_start / 2) & (wsd.step < decay_start))
    gap = stable.hill_loss.mean("step").median("seed")
    end = ds.isel(step=slice(-max(1, len(ds.step) // 50), None)).mean("step").median("seed")
    per_lr = {}
    for lr in ds.lr.values:
        e = end.sel(lr=lr)
        per_lr[f"{lr:g}"] = {
            "stable_gap": float(gap.sel(lr=lr)), "predicted_gap": predicted_gap(config, float(lr)),
            "measured_over_predicted": round(float(gap.sel(lr=lr)) / predicted_gap(config, float(lr)), 3),
            "final_gap_wsd": float(e.hill_loss.sel(schedule="wsd")),
            "final_loss_wsd": float(e.loss.sel(schedule="wsd")), "final_loss_cosine": float(e.loss.sel(schedule="cosine")),
            "final_river_position_wsd": float(e.river_position.sel(schedule="wsd")),
            "final_river_position_cosine": float(e.river_position.sel(schedule="cosine"))}
    v = [per_lr[f"{lr:g}"] for lr in sorted(ds.lr.values)]
    net_end = ds.network_loss.isel(network_step=slice(-3, None)).mean("network_step").median("network_seed")
    net = {f"{lr:g}": {s: float(net_end.sel(network_lr=lr, schedule=s)) for s in SCHEDULES}
           for lr in ds.network_lr.values}
    return {"per_lr": per_lr, "diverged_runs": int(ds.diverged.sum()), "network_final_loss": net,
            "network_diverged_runs": int(ds.network_diverged.sum()), "claims": {
        "stable phase: the gap above the river grows with eta (every pair of rates)":
            all(a["stable_gap"] < b["stable_gap"] for a, b in zip(v, v[1:])),
        "the decay removes the gap: final gap < 0.1 x the stable-phase gap, every rate":
            all(x["final_gap_wsd"] < 0.1 * x["stable_gap"] for x in v),
        "WSD ends lower than cosine of the same length and peak, every rate":
            all(x["final_loss_wsd"] < x["final_loss_cosine"] for x in v),
        "the small network too: WSD ends at a lower training loss than cosine, every rate":
            all(x["wsd"] < x["cosine"] for x in net.values())}}


def figures(ds, config: dict, out_dir) -> list[str]:
    rows = [{"da": ds.sel(schedule=s).loss, "ylabel": f"loss L ({s})", "logy": True} for s in SCHEDULES]
    rows += [{"da": ds.sel(schedule="wsd").hill_loss, "ylabel": "gap above the river\nL - l(u) (wsd)", "logy": True},
             {"da": ds.sel(schedule="wsd").river_loss, "ylabel": "river l(u) (wsd)", "logy": True},
             {"da": ds.sel(schedule="cosine").river_loss, "ylabel": "river l(u) (cosine)", "logy": True}]
    title = (f"River valley (Wen et al. 2024 toy, d = {config['dim']}, lambda {config['lambda_min']:g}-"
             f"{config['lambda_max']:g}), SGD batch {config['batch_size']} of {config['n']}\n"
             f"WSD (decay over the last {config['decay_fraction']:.0%}) vs cosine; median over {ds.sizes['seed']} seeds")
    net = ds.network_loss.rename(network_step="step", network_lr="lr", network_seed="seed")
    net_rows = [{"da": net.sel(schedule=s), "ylabel": f"training loss ({s})", "logy": True} for s in SCHEDULES]
    net_title = (f"The small network: MLP {'-'.join(map(str, config['network_widths']))} tanh on digits, "
                 f"SGD batch {config['network_batch_size']}\nWSD vs cosine; median over {net.sizes['seed']} seeds")
    return [plot.panels(f"{out_dir}/wsd_river_valley.png", rows, hue="lr", title=title),
            plot.panels(f"{out_dir}/wsd_network.png", net_rows, hue="lr", title=net_title, logx=False)]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
