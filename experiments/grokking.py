"""Grokking: on modular arithmetic a network fits its training set long before it
generalizes, and weight decay decides whether and when it does.

Power, Burda, Edwards, Babuschkin & Misra 2022, "Grokking: generalization beyond
overfitting on small algorithmic datasets"; Nanda, Chan, Lieberum, Smith & Steinhardt
2023, "Progress measures for grokking via mechanistic interpretability". Every pair
(a, b) of Z_p^2 is labelled (a + b) mod p; a random `train_fraction` of the pairs is the
training set (drawn from `data_seed`, the same for every run, `engine.data.modular`),
the rest the test set. Full-batch AdamW (betas 0.9 / 0.98) with a 10-step linear
warmup minimizes the softmax cross-entropy. Weight decay, training fraction and seeds
are all traced: one program (`engine.data.modular_ranked`: every pair ranked in the
data seed's order; a run at fraction f trains on the first floor(f N), exactly the pairs
of the static split `modular(p, op, f, data_seed)`, and tests on the rest).

Measured per run: t_train, the first record step with training accuracy >= 99%;
t_half and t_test, the first with test accuracy >= 50% and >= 95%; the weight norm
||theta|| at its peak before t_half and at t_test. The claims, at the reference weight
decay `claim_weight_decay` and the largest training fraction (median over seeds):
t_half >= 5 t_train (test accuracy stays below 50% until then), the test accuracy passes
95% by the end, and the weight norm at t_test is below its peak (it falls through the
transition). Across the grid: at the smallest weight decay, and at the smallest
training fraction, grokking comes later or not at all (t_test larger, or never within
the run).

Quick preset (2-core CPU, about 2 minutes): a two-hidden-layer ReLU MLP (128 units) on the
one-hot pairs, p = 31, half the pairs (and 30%) for training, lr 3e-3 (Nanda's 1e-3 with weight
decay 1 did not grok within 6000 steps at this size: test accuracy 0.6%; our choice),
weight decay 0.3, 1 and 3. Measured (2 seeds): at half the pairs and weight decay 3,
t_train 100, t_test 2400-2550, final test accuracy 0.95-0.96; weight decay 1 reaches
0.68, 0.3 stays below 0.03; at 30% of the pairs no run generalizes within 6000 steps
(test accuracy 0 at every weight decay). The transformer path, shrunk (`--set
model=transformer p=23 lr=3e-3 weight_decays=[1.0] claim_weight_decay=1.0
train_fractions=[0.5] steps=3000 seeds=1`, 1.4 min on 2 quiet cores): t_train 50, t_half
1200, t_test 2800, final test accuracy 1.0, the weight norm 43.3 at its peak and 24.3 at
t_test; unlike the MLP its test accuracy sat at 0.43-0.46 from step 50 until ~1100, with
two Softmax Collapse episodes (up to 76% of the training pairs) around steps 1200 and
2550. (Measured after the attention softmax became `models.softmax`; before, the same
run rounded differently: t_half 1150, t_test 2350, 26.2 at t_test, collapse 60%.)
Paper preset: Nanda et al.'s one-layer transformer (d_model 128, 4 heads, MLP 512, ReLU,
no LayerNorm) on the token sequences (a, b, =), p = 113, 30% for training, lr 1e-3,
weight decay 1 (and 0.1, 0.3), 40000 steps.
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import analysis, data, experiment, models, optim, plot, schedules, simulate, sweep
from engine.errors import FRACTION, POSITIVE, Range, require

NAME = "grokking"
PRESETS = {
    "quick": {"model": "mlp", "p": 31, "op": "+", "train_fractions": [0.3, 0.5], "data_seed": 0, "width": 128,
              "lr": 3e-3, "weight_decays": [0.3, 1.0, 3.0], "claim_weight_decay": 3.0, "warmup_steps": 10,
              "seeds": 2, "steps": 6000, "every": 50},
    "paper": {"model": "transformer", "p": 113, "op": "+", "train_fractions": [0.3], "data_seed": 0, "width": 128,
              "lr": 1e-3, "weight_decays": [0.1, 0.3, 1.0], "claim_weight_decay": 1.0, "warmup_steps": 10,
              "seeds": 4, "steps": 40000, "every": 200},
}
RANGES = {"p": Range(2, integer=True), "train_fractions": FRACTION, "data_seed": Range(0, integer=True),
          "width": Range(1, integer=True), "lr": POSITIVE, "weight_decays": Range(0), "warmup_steps": Range(0)}
PROBES = ("loss", "accuracy", "test_loss", "test_accuracy", "param_norm", "softmax_collapse")


def network(config: dict) -> models.Model:
    p, width = config["p"], config["width"]
    if config["model"] == "mlp":
        return models.mlp((2 * p, width, width, p), "relu")
    require(config["model"] == "transformer", "model", f"got {config['model']!r}", "use 'mlp' or 'transformer'")
    return models.transformer(vocab=p + 1, seq_len=3, out_dim=p, d_model=width, heads=4, mlp_ratio=4,
                              layer_norm=False, activation="relu")


def build(config: dict):
    """The Simulation: every pair, the split drawn per run from its `train_fraction`."""
    require(config["claim_weight_decay"] in config["weight_decays"], "claim_weight_decay",
            f"{config['claim_weight_decay']} is not in weight_decays", "pick one of weight_decays")
    model = network(config)
    encoding = "one_hot" if config["model"] == "mlp" else "tokens"
    opt = optim.adamw(lr=config["lr"], b1=0.9, b2=0.98, schedule=schedules.warmup(float(config["warmup_steps"])))

    d = data.modular_ranked(config["p"], config["op"], config["data_seed"], encoding)
    return simulate.simulation(model, d, "cross_entropy", opt, steps=config["steps"], every=config["every"],
                               probes=PROBES, train_fraction=float(max(config["train_fractions"])))


def run_sweep(config: dict, **options):
    grid = {"weight_decay": [float(w) for w in config["weight_decays"]],
            "train_fraction": [float(f) for f in config["train_fractions"]]}
    return sweep.sweep(build(config), grid=grid, seeds=config["seeds"], **options)


def milestones(ds) -> xr.Dataset:
    """t_train, t_half, t_test; the peak weight norm before t_half and the norm at t_test."""
    order = lambda da: da.transpose(..., "step")
    t_train = analysis.first_time(order(ds.accuracy) >= 0.99)
    t_half, t_test = (analysis.first_time(order(ds.test_accuracy) >= level) for level in (0.5, 0.95))
    norm = order(ds.param_norm)
    steps = xr.DataArray(ds.step.values, dims="step", coords={"step": ds.step})
    peak = norm.where(steps < t_half.fillna(np.inf)).max("step")
    at_test = norm.where(steps == t_test).max("step")
    return xr.Dataset({"t_train": t_train, "t_half": t_half, "t_test": t_test, "peak_norm": peak,
                       "norm_at_t_test": at_test, "final_test_accuracy": ds.test_accuracy.isel(step=-1)})


def summarize(ds, config: dict) -> dict:
    m = milestones(ds)
    wd, f = config["claim_weight_decay"], max(config["train_fractions"])
    ref = m.sel(weight_decay=wd, train_fraction=f)
    med = {k: float(ref[k].median("seed")) for k in ref.data_vars}
    small = m.sel(weight_decay=min(config["weight_decays"]), train_fraction=f).t_test
    few = m.sel(weight_decay=wd, train_fraction=min(config["train_fractions"])).t_test
    later = lambda t: bool(np.isnan(float(t.median())) or float(t.median()) > med["t_test"])
    table = {f"wd={w:g},f={f:g}": {k: [None if np.isnan(v) else round(float(v), 4) for v in
                                       m[k].sel(weight_decay=w, train_fraction=f).values] for k in m.data_vars}
             for w in m.weight_decay.values for f in m.train_fraction.values}
    return {"per_run": table, "reference": {"weight_decay": config["claim_weight_decay"],
                                             "train_fraction": float(ref.train_fraction), **med},
            "claims": {
                "training accuracy passes 99% (t_train) in every run at the reference weight decay":
                    bool(np.all(np.isfinite(ref.t_train.values))),
                "test accuracy stays below 50% until t_half >= 5 t_train (median)": bool(med["t_half"] >= 5 * med["t_train"]),
                "then the test accuracy passes 95% (median)": bool(np.isfinite(med["t_test"])),
                "the weight norm falls through the transition: ||theta|| at t_test < its peak (median)":
                    bool(med["norm_at_t_test"] < med["peak_norm"]),
                "at the smallest weight decay grokking comes later or never (median t_test)": later(small),
                **({} if len(config["train_fractions"]) < 2 else {
                    "at the smallest training fraction grokking comes later or never (median t_test)": later(few)})}}


def figures(ds, config: dict, out_dir) -> list[str]:
    ds = ds.sel(step=ds.step > 0)
    by_fraction = ds.sel(weight_decay=config["claim_weight_decay"])
    ds = ds.sel(train_fraction=max(config["train_fractions"]))
    title = (f"Grokking: {config['model']} on (a {config['op']} b) mod {config['p']}, AdamW lr {config['lr']:g}\n"
             f"{float(ds.train_fraction):g} of the pairs for training; median over {ds.sizes['seed']} seeds")
    rows = [{"da": ds.accuracy, "ylabel": "train accuracy"}, {"da": ds.test_accuracy, "ylabel": "test accuracy"},
            {"da": ds.param_norm, "ylabel": "||theta||"},
            {"da": ds.softmax_collapse, "ylabel": "softmax collapsed\n(fraction of train)"}]
    fraction_rows = [{"da": by_fraction.accuracy, "ylabel": "train accuracy"},
                     {"da": by_fraction.test_accuracy, "ylabel": "test accuracy"}]
    fraction_title = (f"Training fractions, one program: weight decay {config['claim_weight_decay']:g}\n"
                      f"median over {ds.sizes['seed']} seeds")
    return [plot.panels(f"{out_dir}/grokking.png", rows, hue="weight_decay", title=title, logx=True),
            plot.panels(f"{out_dir}/grokking_fractions.png", fraction_rows, hue="train_fraction",
                        title=fraction_title, logx=True)]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
