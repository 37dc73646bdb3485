"""Complexity control: does an initialization rate held constant across widths keep a
transformer's inferential answer to an unseen composition as it widens, where a constant
initialization std does not?

Hang et al. 2025, "Scalable Complexity Control Facilitates Reasoning Ability of LLMs",
at toy scale. They control a model's complexity by the initialization rate gamma
(every weight drawn with std d_in^-gamma) together with the weight decay, compare "small
complexity" (gamma 1, weight decay 1) with "large complexity" (gamma 0.5, weight decay
0.1) and the standard LLM initialization (std 0.02, weight decay 0.1), and report that a
constant gamma scales across model sizes better than a constant std. We do NOT
reproduce their LLM results; we ask the same question of the composite anchor task of
Zhang et al. 2024 (`experiments.anchor_functions`, whose task, transformer, optimizer
and held-out probe we import unchanged): sequences holding a key z and two anchors in
1..4 (anchors add 5, 1, -2, -8 mod vocab; (3, 4) is labelled z - 6), 15 pairs trained,
(4, 3) held out; on (4, 3) a model answers inferentially (z - 10, composing the
single-anchor maps: the "reasoning" answer), symmetrically (z - 6, the label of the
mirrored (3, 4)) or otherwise (`probes.held_out_answers`).

Runs, per width d_model (a static axis: one program per width and initialization kind):
- fan-in init (`init.fan_in_power`, std = d_in^-gamma) over the grid gamma x weight
  decay (both traced: one program), gamma in `gammas`, weight decay in
  `weight_decays`. The corners gamma 1 / wd 1 ("small complexity") and gamma 0.5 / wd
  0.1 ("large complexity") are the paper's; the other two corners (gamma 1 / wd 0.1,
  gamma 0.5 / wd 1) separate the effect of the init from that of the weight decay;
- constant std (`init.constant_std`, every weight N(0, `std`^2) at every width) with
  weight decay `std_weight_decay` ("standard").
The runs are joined on a `scheme` dim named "gamma=G,wd=W" and "std=S,wd=W".

Choices the paper leaves open or that this toy forces, made here: the task and model
are anchor_functions' (pre-LayerNorm, GELU, one head, MLP 4 d_model, depth `depth`);
AdamW (optax's: the decay step is lr_t * wd * theta, so wd 1 with lr 1e-3 shrinks the
weights by at most 0.1% a step), lr 1e-3, 10% linear warmup then cosine to 0, clipping
at global norm 1, batches of `batch_size`; the same sequences in every run
(`data_seed`); the embeddings and positions drawn like any d_model-wide layer (std
d_model^-gamma). The widths are far below the paper's, so "as width grows" means
d_model 16 -> 64 (quick) or 32 -> 256 (paper).

Measured (from the saved arrays), per run at the last record: the held-out answer
fractions (inferential / symmetric / other), the training accuracy, the accuracy on
fresh sequences of the trained pairs (`fresh_accuracy`, data seed + 1), the parameter
norm (`param_norm`, the complexity weight decay acts on).

Claims, median over seeds, at the last record:
(a) at the widest width the small-complexity runs (gamma 1, wd 1) answer (4, 3)
    inferentially more often than the standard runs (std 0.02, wd 0.1);
(b) the constant-gamma runs keep their inferential fraction as width grows better than
    the constant-std runs: the drop from the narrowest to the widest width (negative:
    a rise) of small complexity is smaller than that of the standard init, and both fit
    the training pairs (accuracy >= 0.9) at both widths: a model that has not learnt the
    15 trained pairs answers (4, 3) at chance, so its "drop" says nothing;
(c) every small-complexity run fits the training pairs (accuracy >= 0.9).

Quick preset: d_model 16, 32, 64, depth 2, one seed, 1000 sequences per pair (15000),
batches of 100, 1500 steps; 5 runs per width in 2 programs. It took 12.3 min wall (8.5
min of CPU) on 2 cores shared with four other jobs (load 7-11): more than the few
minutes we aimed at, because the narrower models do not fit in fewer steps. Measured, at
step 1500 (train accuracy / inferential / symmetric on (4, 3)):

    d_model                     16                   32                   64
    gamma 1,   wd 1   (small)   0.09 / 0.07 / 0.10   0.40 / 0.17 / 0.13   0.81 / 0.60 / 0.07
    gamma 0.5, wd 0.1 (large)   0.03 / 0.01 / 0.02   0.47 / 0.11 / 0.06   1.00 / 0.40 / 0.11
    std 0.02,  wd 0.1 (standard) 0.17 / 0.07 / 0.15  0.54 / 0.22 / 0.09   0.96 / 0.12 / 0.74
    gamma 1,   wd 0.1           0.32 / 0.15 / 0.10   0.80 / 0.58 / 0.04   0.96 / 0.11 / 0.73
    gamma 0.5, wd 1             0.03 / 0.02 / 0.02   0.40 / 0.18 / 0.07   0.98 / 0.60 / 0.03

(Rerun after the attention softmax became `models.softmax`, 4.1 min on 2 quiet cores:
every entry within 0.01 of this table, the verdicts unchanged.)

Claim (a) holds at d_model 64 at step 1500 (small complexity inferential 0.60, the
standard init 0.115, symmetric 0.74) but NOT once small complexity has fitted: with
2500 steps (`--set 'widths=[32,64]' --set steps=2500 --set every=250`, 10.4 min) it
reaches 0.95 training accuracy at d_model 64 and answers symmetrically 0.75,
inferentially 0.08 (standard: 0.84 / 0.155); its 0.60 in the 1500-step run came while
it was still fitting (0.81), and in the 2500-step run its inferential fraction peaked
at 0.43 near step 750 before the symmetric answer took over; there only gamma 0.5 answers
inferentially (wd 1: 0.735, wd 0.1: 0.49; symmetric <= 0.06) and both gamma-1 runs and
the standard init symmetrically (0.75-0.84). So at this scale the larger initialization
(gamma 0.5, std 1/8 at d_model 64, against 1/64 for gamma 1 and 0.02 for the standard)
composes, as anchor_functions found, the opposite of the paper's direction; at d_model
32, 2500 steps, no small-complexity run fits (0.40) and the standard init nearly does
(0.86, inferential 0.315, symmetric 0.055), so (b) is again not shown.
In the quick preset claim (b) is not shown: at d_model 16 and 32 no run fits in 1500 steps (training accuracy <= 0.80), so their
held-out answers are mostly "other" and there is no fitted narrow model to hold the
wide one against (the raw "drops" 16 -> 64, small -0.535, standard -0.05, are rises of
models learning, not the width effect). Claim (c) fails: small complexity reaches 0.81
training accuracy at d_model 64 (fresh sequences 0.83); weight decay 1 slows fitting.
The ablation corners say that at d_model 64 the weight decay, not gamma, decides the
answer: both wd-1 runs answer inferentially (0.60, 0.595), both wd-0.1 fan-in runs
less so (gamma 0.5: 0.40; gamma 1: 0.11, symmetric 0.73, like the standard init and like
anchor_functions' gamma 1 with wd 0.01) at step 1500; at 2500 steps (above) gamma, not
the weight decay, decides it, once every run has fitted. Along training the gamma 1 / wd 0.1 and
the standard runs pass through an inferential phase (0.25-0.37 near step 500-700) before
the symmetric answer takes over, as anchor_functions saw at gamma 1. The parameter norm
at the end grows with width for every scheme (standard 12.1 -> 23.5, small 8.4 -> 14.5,
large 22.3 -> 41.3): small complexity is the smallest at every width.
Paper preset (not run): d_model 32 ... 256, four seeds, batches of 1000, 20000 steps.
"""
from __future__ import annotations

import sys

import xarray as xr

from engine import experiment, init, models, optim, plot, probes, schedules, simulate, sweep
from engine.errors import COUNT, POSITIVE, Range, require
from experiments import anchor_functions

NAME = "complexity_control"
_TASK = {"vocab": 100, "key_low": 20, "seq_len": 8, "n_per_pair": 1000, "data_seed": 0, "heads": 1, "lr": 1e-3,
         "clip_norm": 1.0, "warmup_fraction": 0.1, "gammas": [0.5, 1.0], "weight_decays": [0.1, 1.0],
         "std": 0.02, "std_weight_decay": 0.1}
PRESETS = {
    "quick": {**_TASK, "n_test": 200, "widths": [16, 32, 64], "depth": 2, "batch_size": 100, "steps": 1500,
              "every": 150, "seeds": 1},
    "paper": {**_TASK, "n_test": 1000, "widths": [32, 64, 128, 256], "depth": 2, "batch_size": 1000,
              "steps": 20000, "every": 500, "seeds": 4},
}
RANGES = {"vocab": COUNT, "key_low": COUNT, "seq_len": COUNT, "n_per_pair": COUNT, "n_test": COUNT,
          "data_seed": Range(0, integer=True), "widths": COUNT, "depth": COUNT, "heads": COUNT, "gammas": POSITIVE,
          "weight_decays": Range(0), "std": POSITIVE, "std_weight_decay": Range(0), "lr": POSITIVE,
          "clip_norm": POSITIVE, "warmup_fraction": Range(0, 1, hi_open=True), "batch_size": COUNT, "steps": COUNT,
          "every": COUNT}
SMALL, LARGE = (1.0, 1.0), (0.5, 0.1)  # (gamma, weight decay) of Hang et al.'s small and large complexity
FIT = 0.9  # the training accuracy at which a run counts as having learnt the 15 trained pairs


def fan_in_label(gamma, wd) -> str:
    return f"gamma={float(gamma):g},wd={float(wd):g}"


def std_label(config) -> str:
    return f"std={float(config['std']):g},wd={float(config['std_weight_decay']):g}"


def build(config: dict):
    """(d_model, kind) -> Simulation, kind "fan_in" (init.fan_in_power) or "std"
    (init.constant_std); weight decay and the init's scale are traced."""
    for field, paper in (("gammas", (SMALL[0], LARGE[0])), ("weight_decays", (SMALL[1], LARGE[1]))):
        require(all(v in config[field] for v in paper), field,
                f"{config[field]} lacks one of {list(paper)}, the paper's small and large complexity",
                f"keep {paper[0]:g} and {paper[1]:g} in {field}")
    table, d, _ = anchor_functions.task({**config, "probe_count": 1})
    x_fresh, y_fresh = anchor_functions.fresh_sequences(config)
    require(config["batch_size"] <= d.n, "batch_size", f"{config['batch_size']} > {d.n} training sequences",
            f"use batch_size <= {d.n}")
    opt = optim.adamw(lr=config["lr"], weight_decay=config["std_weight_decay"], clip_norm=config["clip_norm"],
                      schedule=schedules.warmup_cosine(config["warmup_fraction"] * config["steps"], config["steps"]))
    recorded = ("loss", "accuracy", "param_norm", probes.held_out_answers(table),
                probes.answer_kinds(x_fresh, {"correct": y_fresh}, "fresh_answers"))

    def at(d_model, kind):
        model = models.transformer(vocab=config["vocab"], seq_len=config["seq_len"], d_model=int(d_model),
                                   heads=config["heads"], depth=config["depth"])
        scheme = init.fan_in_power(model, min(config["gammas"])) if kind == "fan_in" else \
            init.constant_std(model, config["std"])
        return simulate.simulation(model, d, "cross_entropy", opt, scheme, steps=config["steps"],
                                   every=config["every"], probes=recorded, batch_size=config["batch_size"])
    return at


def run_sweep(config: dict, **options):
    """Per width: the fan-in grid gamma x weight decay (one program) and the constant-std
    run (another), relabelled onto one `scheme` dim and joined on `d_model`."""
    at, parts = build(config), []
    for w in config["widths"]:
        fan = sweep.sweep(at(w, "fan_in"), grid={"gamma": [float(g) for g in config["gammas"]],
                                                 "weight_decay": [float(v) for v in config["weight_decays"]]},
                          seeds=config["seeds"], name=f"fan_in_{int(w)}", **options)
        std = sweep.sweep(at(w, "std"), grid={"init_std": [float(config["std"])],
                                              "weight_decay": [float(config["std_weight_decay"])]},
                          seeds=config["seeds"], name=f"std_{int(w)}", **options)
        runs = [fan.sel(gamma=g, weight_decay=v, drop=True).expand_dims(scheme=[fan_in_label(g, v)])
                for g in fan.gamma.values for v in fan.weight_decay.values]
        runs.append(std.isel(init_std=0, weight_decay=0, drop=True).expand_dims(scheme=[std_label(config)]))
        parts.append(xr.concat(runs, "scheme", combine_attrs="drop_conflicts").expand_dims(d_model=[int(w)]))
    ds = xr.concat(parts, "d_model", combine_attrs="drop_conflicts")
    return ds.transpose("seed", "d_model", "scheme", "step", ...)


def measures(ds) -> xr.Dataset:
    """Per run at the last record: held-out answer fractions, training and fresh
    accuracy, parameter norm. Dims (seed, d_model, scheme)."""
    last = ds.isel(step=-1)
    kinds = last.held_out_answers
    out = {k: kinds.sel(held_out_answers_kind=k, drop=True) for k in ("inferential", "symmetric", "other")}
    out.update(accuracy=last.accuracy, param_norm=last.param_norm,
               fresh_accuracy=last.fresh_answers.sel(fresh_answers_kind="correct", drop=True))
    return xr.Dataset(out)


def summarize(ds, config: dict) -> dict:
    m = measures(ds)
    med = m.median("seed")
    small, large, std = fan_in_label(*SMALL), fan_in_label(*LARGE), std_label(config)
    lo, hi = int(m.d_model.min()), int(m.d_model.max())
    inf = med.inferential

    def drop(scheme):
        return float(inf.sel(d_model=lo, scheme=scheme) - inf.sel(d_model=hi, scheme=scheme))
    claims = {
        f"(a) at d_model {hi} small complexity ({small}) answers (4, 3) inferentially more often than the standard "
        f"init ({std})": bool(inf.sel(d_model=hi, scheme=small) > inf.sel(d_model=hi, scheme=std)),
        f"(b) from d_model {lo} to {hi} the inferential fraction of small complexity drops less than the standard "
        f"init's, both fitting the training pairs (accuracy >= {FIT}) at both widths":
            drop(small) < drop(std) and bool((m.accuracy.sel(d_model=[lo, hi], scheme=[small, std]) >= FIT).all()),
        f"(c) every small-complexity run fits the training pairs (accuracy >= {FIT})":
            bool((m.accuracy.sel(scheme=small) >= FIT).all()),
    }
    return {"per_run": {f"d_model={int(w)},{s}": {k: [round(float(v), 4) for v in m[k].sel(d_model=w, scheme=s).values]
                                                  for k in m.data_vars}
                        for w in m.d_model.values for s in m.scheme.values},
            "median": {k: {s: {f"{int(w)}": round(float(med[k].sel(d_model=w, scheme=s)), 4) for w in m.d_model.values}
                           for s in m.scheme.values} for k in m.data_vars},
            "inferential_drop_narrowest_to_widest": {s: round(drop(s), 4) for s in (small, large, std)},
            "claims": claims}


def figures(ds, config: dict, out_dir) -> list[str]:
    m = measures(ds)
    named = [(fan_in_label(*SMALL), "small complexity"), (fan_in_label(*LARGE), "large complexity"),
             (std_label(config), "standard (constant std)")]
    fig, axes = plot.figure(1, 3, (13.5, 3.8), squeeze=False)
    for ax, (s, title) in zip(axes[0], named):
        for kind, color in (("inferential", "tab:blue"), ("symmetric", "tab:red"), ("other", "tab:gray"),
                            ("accuracy", "black")):
            da = m[kind].sel(scheme=s)
            ax.fill_between(da.d_model, da.min("seed"), da.max("seed"), color=color, alpha=0.2, lw=0)
            ax.plot(da.d_model, da.median("seed"), "o-" if kind != "accuracy" else "s--", color=color,
                    label=kind if kind != "accuracy" else "train accuracy")
        ax.set(xscale="log", xlabel="d_model", ylabel="fraction of held-out (4, 3)", title=f"{title}\n{s}",
               ylim=(-0.02, 1.02))
        ax.set_xticks(m.d_model.values, [str(int(w)) for w in m.d_model.values])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Held-out pair (4, 3) answers vs width at step {int(ds.step[-1])}, depth {config['depth']}; "
                 f"median and range over {ds.sizes['seed']} seed(s)", fontsize=10)
    paths = [plot.save(fig, f"{out_dir}/complexity_answers_vs_width.png")]
    # every scheme's inferential fraction and parameter norm vs width (the ablation corners too)
    fig, axes = plot.figure(1, 2, (11, 3.8), squeeze=False)
    for s in m.scheme.values:
        for ax, k in zip(axes[0], ("inferential", "param_norm")):
            ax.plot(m.d_model, m[k].sel(scheme=s).median("seed"), "o-", label=str(s))
    for ax, k in zip(axes[0], ("held-out (4, 3): inferential fraction", "parameter norm at the end")):
        ax.set(xscale="log", xlabel="d_model", ylabel=k)
        ax.set_xticks(m.d_model.values, [str(int(w)) for w in m.d_model.values])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0, 1].set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    paths.append(plot.save(fig, f"{out_dir}/complexity_inferential_vs_width.png"))
    # along training at the widest width
    tr = ds.sel(step=ds.step > 0, d_model=int(ds.d_model.max()))
    rows = [{"da": tr.accuracy, "ylabel": "train accuracy"},
            {"da": tr.held_out_answers.sel(held_out_answers_kind="inferential"), "ylabel": "held-out:\ninferential"},
            {"da": tr.held_out_answers.sel(held_out_answers_kind="symmetric"), "ylabel": "held-out:\nsymmetric"}]
    paths.append(plot.panels(f"{out_dir}/complexity_over_training.png", rows, hue="scheme", logx=True,
                             title=f"d_model {int(ds.d_model.max())}: median over {ds.sizes['seed']} seed(s)"))
    return paths


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
