"""Grokking at the edge of numerical stability: without regularization, softmax
cross-entropy drives the logits up until the softmax rounds to exactly 1 and the
gradient vanishes (Softmax Collapse, SC); StableMax avoids the collapse and groks, and
the orthogonal gradient (⊥AdamW) generalizes with no delay.

Prieto, Barsbey, Mediano & Birdal 2025, "Grokking at the Edge of Numerical Stability"
(ICLR 2025; reference code github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-
stability, whose defaults we follow). Every pair (a, b) of Z_p^2 is labelled (a + b) mod p
and fed as the concatenated one-hots [2p] (`engine.data.modular`, the split drawn from
`data_seed`, the same for every run); an MLP with two hidden ReLU layers of `width` units
and NO biases (as the reference's `MLP(..., bias=False)`) is trained full batch with
AdamW, lr 0.01, betas (0.9, b2 = 0.99, the reference default), Adam eps 1e-25 and no
weight decay, in four variants (a static axis `variant`, each its own program; not
"method", which xarray's `sel` takes as an argument):
    softmax_float16 / softmax_float32   softmax cross-entropy with the logits cast to that
                                        float type (`engine.losses.cross_entropy_in`; the
                                        network itself computes in float32, as theirs)
    stablemax                           StableMax cross-entropy (`losses.stablemax_cross_entropy`,
                                        in log space in float32; the reference computes
                                        s / sum s in float64)
    orthogonal_adamw                    float32 softmax cross-entropy, the gradient of each
                                        weight tensor made orthogonal to it first (⊥AdamW,
                                        `optim.adamw(orthogonal=True)`)
and "softmax_float64" with `--x64`. Initialization: the reference keeps torch's default,
W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in); we draw a Gaussian of that
std (`init_scale` = 1/sqrt(3) times `models.mlp`'s N(0, 1/fan_in); our choice of law).
The reference also reshuffles the full batch every step (it only changes rounding); we
do not. Recorded every `every` steps: loss, train and test accuracy, the mean logit
norm, and `softmax_collapse`, the fraction of training pairs whose correct-class softmax
probability is exactly 1, measured in each variant's own loss precision (float16 for
softmax_float16, float32 for the others; for StableMax it is the softmax it does NOT
use, so it shows how far past float32 softmax's resolution its logits go while it keeps
learning).

Claims (median over seeds): Softmax Collapse comes sooner in float16 than in float32
(collapse step: the first record with >= half the training pairs collapsed; never
counts as later); once a softmax run has collapsed its test accuracy stops improving
(it gains < 0.05 from its collapse step to the end); with no weight decay StableMax beats
float32 softmax in final test accuracy by more than 0.1; ⊥AdamW generalizes without the
delay (test accuracy >= 90%, t_test, before StableMax's, or StableMax never gets there).

Quick preset (2-core CPU, ~2 minutes): p = 47 and 70% of the pairs for training (a
training fraction of the paper's Fig. 2), width 200, 3000 steps. The issue's p = 113 with
40% did not show StableMax grokking at CPU length (measured, one seed: test accuracy
0.003 after 2000 steps at p = 113; 0.000 after 3000 steps at p = 47 with 40%, and after
6000 with b2 = 0.999, the reference's Fig. 1 StableMax setting, which it runs for 80000
steps) while ⊥AdamW passed 99% test accuracy by step 100 at p = 113 and the collapse
came at step ~300 in float16 and ~1900 in float32. Measured on the quick preset (median
of 2 seeds): collapse step 100 in float16, 1725 in float32; test accuracy gained after
it 0.023 and 0.006; final test accuracy StableMax 0.91 (t_test 2850), float32 softmax
0.005, float16 0.022, ⊥AdamW 1.00 (t_test 50, before t_train 75). Caveat: here softmax's
test accuracy never rose above chance before its collapse, so "stops improving" is shown
only as "does not start"; the paper's Fig. 2 (lr 5e-4) has it plateau at a level that
rises with the precision, which needs ~10^4 steps. Paper preset: p = 113, 40%, 80000 steps
(the reference's Fig. 1 length), four seeds; for an accelerator, not run here.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import xarray as xr

from engine import analysis, data, experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import BETA, FRACTION, POSITIVE, Range, require

NAME = "grokking_numerical_stability"
# variant -> (loss, orthogonal gradient, the float type its softmax is computed in)
VARIANTS = {"softmax_float16": ("cross_entropy_float16", False, "float16"),
            "softmax_float32": ("cross_entropy_float32", False, "float32"),
            "softmax_float64": ("cross_entropy_float64", False, "float64"),
            "stablemax": ("stablemax_cross_entropy", False, "float32"),
            "orthogonal_adamw": ("cross_entropy_float32", True, "float32")}
_COMMON = {"op": "+", "data_seed": 0, "width": 200, "init_scale": 1 / math.sqrt(3), "lr": 0.01, "b2": 0.99,
           "eps": 1e-25, "variants": ["softmax_float16", "softmax_float32", "stablemax", "orthogonal_adamw"]}
PRESETS = {
    "quick": {"p": 47, "train_fraction": 0.7, **_COMMON, "seeds": 2, "steps": 3000, "every": 50},
    "paper": {"p": 113, "train_fraction": 0.4, **_COMMON, "seeds": 4, "steps": 80000, "every": 500},
}
RANGES = {"p": Range(2, integer=True), "train_fraction": FRACTION, "data_seed": Range(0, integer=True),
          "width": Range(1, integer=True), "init_scale": POSITIVE, "lr": POSITIVE, "b2": BETA, "eps": Range(0)}
PROBES = ("loss", "accuracy", "test_accuracy", "logit_norm")


def build(config: dict):
    """variant -> Simulation (each variant its own loss or optimizer: a static axis)."""
    for v in config["variants"]:
        require(v in VARIANTS, "variants", f"unknown variant {v!r}", f"use some of {', '.join(VARIANTS)}")
    p, width = config["p"], config["width"]
    d = data.modular(p, config["op"], config["train_fraction"], config["data_seed"])
    model = models.mlp((2 * p, width, width, p), "relu", bias=False)
    theta0 = init.scaled(model)._replace(defaults={"init_scale": config["init_scale"]})

    def at(variant):
        loss, orthogonal, dtype = VARIANTS[variant]
        opt = optim.adamw(lr=config["lr"], b2=config["b2"], eps=config["eps"], weight_decay=0.0,
                          orthogonal=orthogonal)
        return simulate.simulation(model, d, loss, opt, init=theta0, steps=config["steps"], every=config["every"],
                                   probes=(*PROBES, probes.softmax_collapse(dtype)))
    return at


def run_sweep(config: dict, **options):
    return sweep.sweep(build(config), static={"variant": list(config["variants"])}, seeds=config["seeds"],
                       **options)


def milestones(ds) -> xr.Dataset:
    """Per run: t_train (train accuracy >= 99%), t_test (test accuracy >= 90%), the
    collapse step (>= half the training pairs collapsed), the test accuracy gained from
    the collapse step to the end (NaN without collapse), final and best test accuracy."""
    order = lambda da: da.transpose(..., "step")
    collapse = analysis.first_time(order(ds.softmax_collapse) >= 0.5)
    steps = xr.DataArray(ds.step.values, dims="step", coords={"step": ds.step})
    test = order(ds.test_accuracy)
    at_collapse = test.where(steps == collapse).max("step")
    gain = test.where(steps >= collapse).max("step") - at_collapse
    return xr.Dataset({"t_train": analysis.first_time(order(ds.accuracy) >= 0.99),
                       "t_test": analysis.first_time(test >= 0.9),
                       "collapse_step": collapse, "gain_after_collapse": gain.where(np.isfinite(collapse)),
                       "final_test_accuracy": test.isel(step=-1), "best_test_accuracy": test.max("step"),
                       "final_collapsed": order(ds.softmax_collapse).isel(step=-1),
                       "final_logit_norm": order(ds.logit_norm).isel(step=-1)})


def _median(da) -> float | None:
    v = float(da.median("seed"))
    return None if np.isnan(v) else round(v, 4)


def summarize(ds, config: dict) -> dict:
    m = milestones(ds)
    med = {k: {str(v): _median(m[k].sel(variant=v)) for v in m.variant.values} for k in m.data_vars}
    have = set(config["variants"])
    never = lambda x: np.inf if x is None else x
    claims = {}
    if {"softmax_float16", "softmax_float32"} <= have:
        c16, c32 = med["collapse_step"]["softmax_float16"], med["collapse_step"]["softmax_float32"]
        claims["Softmax Collapse comes sooner in float16 than in float32 (first step with half the training "
               "pairs collapsed)"] = bool(c16 is not None and c16 < never(c32))
    collapsed = [g for v, g in med["gain_after_collapse"].items() if v.startswith("softmax") and g is not None]
    if collapsed:
        claims["once softmax has collapsed its test accuracy stops improving: gain after the collapse step "
               "< 0.05"] = bool(max(collapsed) < 0.05)
    if {"stablemax", "softmax_float32"} <= have:
        f = med["final_test_accuracy"]
        claims["StableMax beats float32 softmax in final test accuracy by > 0.1, with no weight decay"] = bool(
            f["stablemax"] > f["softmax_float32"] + 0.1)
    if {"stablemax", "orthogonal_adamw"} <= have:
        o, s = med["t_test"]["orthogonal_adamw"], med["t_test"]["stablemax"]
        claims["⊥AdamW generalizes without the delay: test accuracy >= 90% before StableMax's"] = bool(
            o is not None and o < never(s))
    return {"median_over_seeds": med, "claims": claims}


def figures(ds, config: dict, out_dir) -> list[str]:
    ds = ds.sel(step=ds.step > 0)
    title = (f"Grokking at the edge of numerical stability (Prieto et al. 2025)\n"
             f"MLP {config['width']}x2 on (a + b) mod {config['p']}, {config['train_fraction']:g} of the pairs "
             f"for training\nAdamW lr {config['lr']:g}, no weight decay; median over {ds.sizes['seed']} seeds")
    rows = [{"da": ds.accuracy, "ylabel": "train accuracy"}, {"da": ds.test_accuracy, "ylabel": "test accuracy"},
            {"da": ds.softmax_collapse, "ylabel": "softmax collapsed\n(fraction of train,\nin its loss precision)"},
            {"da": ds.logit_norm, "ylabel": "mean ||logits||", "logy": True}]
    return [plot.panels(f"{out_dir}/grokking_numerical_stability.png", rows, hue="variant", title=title, logx=True)]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
