"""Anchor functions: the initialization rate gamma decides whether a transformer solves an
unseen composition by inference (composing what it learnt) or by symmetry (memorizing).

Zhang, Lin, Wang, Zhang & Xu 2024, "Initialization is critical to whether transformers
fit composite functions by reasoning or memorizing" (NeurIPS 2024); Zhang et al. 2024,
"Anchor function: a type of benchmark functions for studying language models". Task
(`engine.anchors.composite`): sequences of `seq_len` tokens from a vocabulary of
`vocab`; a key z (>= key_low) followed by two anchors a1, a2 in 1..4 at a random place,
the rest filler; anchors 1-4 add 5, 1, -2, -8 (mod vocab) and the label, read from the
last position, is z + s_a1 + s_a2, except that (3, 4) is labelled z - 6. The 15 pairs
other than (4, 3) are trained (`n_per_pair` sequences each); on the held-out (4, 3) a
model answers inferentially (z - 10, composing the single-anchor maps) or
symmetrically (z - 6, the label of the mirrored (3, 4)), or otherwise
(`probes.held_out_answers`, recorded along training). The network is
`engine.models.transformer` (pre-LayerNorm blocks, causal attention, learned positions,
last-position readout), every weight matrix and embedding drawn N(0, (d_in^-gamma)^2)
with d_in its input dimension (d_model for the embeddings), biases 0, LayerNorm scales
1 (`init.fan_in_power`; gamma traced: one program per depth). AdamW (weight decay
0.01), linear warmup then cosine decay to 0 (`schedules.warmup_cosine`), gradients
clipped at global norm 1, minibatches of `batch_size`, cross-entropy on the last token.

Choices the papers leave open or that we could not recover from them in this session,
made here: pre-LayerNorm (the engine's transformer), GELU, one head, MLP 4 d_model, the
lr 1e-3 and its 10% warmup, the batch size, and data drawn once from `data_seed` (the
same sequences in every run). The paper's phase diagram spans gamma 0.3 ... 1.0 and
depth; we sweep both (depth a static axis).

Measured (from the saved arrays): the held-out answer fractions at the end of training;
the training accuracy; attention maps of a fixed probe batch (`probe_count` training
sequences) at every record; the query/key projections and MLP input weights of the first
block (`neuron_weights`) whose orientation clusters (`analysis.condensation`, cosine >=
0.95) measure condensation (the share of the units in the two largest clusters).
Attention measures, per (block, head), on the probe batch
with the key at position p and the anchors at p+1, p+2 (A[i, j]: query i on key j):
- shift: the mean of A[p+1, p] and A[p+2, p+1], each anchor's attention on the token just
  before it (the key moved onto the first anchor, the first anchor onto the second);
- broadcast: over the positions i >= p+2 (the composite is complete; at least two of
  them), the largest over sources j of the mean of A[i, j]: one token read by many later
  positions. Probe sequences with fewer than two such positions are left out.
Each is compared with its value under uniform causal attention (A[i, j] = 1/(i+1)).

Claims, per depth, median over seeds, at the last record: (a) every run fits the training
pairs (accuracy >= 0.99); at the largest gamma (small initialization) the held-out pair is
answered inferentially (fraction >= 0.5, above the symmetric one); at the smallest gamma
(large initialization) symmetrically (fraction >= 0.5, above the inferential one). (b) at
the largest gamma the trained model has a head whose shift >= 0.5 and a head whose
broadcast >= 0.5, each at least twice its uniform-attention value.

Also recorded: the accuracy on fresh sequences of the trained pairs (`fresh_accuracy`,
data seed + 1), which tells a rule learnt from sequences memorized.

Quick preset (2-core CPU; 280-350 s, 3 min of CPU time, on 2 cores shared with four other
jobs, load 6-9):
d_model 32, depth 2, gamma 0.3, 0.6, 1.0, one seed, 1000 sequences per pair (15000),
batches of 200, 2000 steps. Measured: gamma 0.3 does not fit in 2000 steps (training
accuracy 0.08, held-out at chance, 0.01 / 0.02); gamma 0.6 fits (0.998, fresh 1.0) and
answers (4, 3) inferentially 0.485, symmetrically 0.01, otherwise 0.505; gamma 1 fits
(0.978, fresh 0.964) and answers symmetrically 0.83, inferentially 0.105 (its
inferential fraction peaked at 0.375 near step 700, before the symmetric answer took
over). So claim (a) fails at this scale, and the wrong way round at gamma 1: the
smallest initialization memorizes the mirrored pair. Attention at gamma 1 (figure): the
first block's head moves the key onto both anchors (A[p+1, p] and A[p+2, p] near 1) and
the later positions split their attention between the two anchors (about 0.5 each), so
best-head shift 0.498 and broadcast 0.481 (uniform: 0.243, 0.163) fall just short of 0.5
and claim (b) fails by its own measure though both operations are plain in the maps; at
gamma 0.6, shift 0.593 and broadcast 0.936. No condensation: the two largest
orientation clusters of W_Q hold 6-12% of its units, of the MLP's input weights 1.6%.
Two seeds at depths 2 and 3 (`--seeds 2 --set 'depths=[2,3]' --set 'gammas=[0.6,1.0]'`,
17 min on busy cores) agree: at gamma 0.6 inferential 0.485 / 0.48 (depth 2) and 0.32 /
0.57 (depth 3), symmetric <= 0.06; at gamma 1 symmetric 0.83 / 0.79 and 0.405 / 0.735,
inferential <= 0.18; every run fits (training accuracy >= 0.975, fresh >= 0.964).
A first try with 100 sequences per pair (1500; 3000 steps, two seeds, gamma 0.3 ... 1)
memorized them all (training accuracy 1.0 at every gamma) and answered (4, 3) at chance
(each answer <= 0.025): too few sequences to learn the rule, so the quick preset uses
1000 per pair. Paper preset (not run): d_model 128, depths 2-4, gamma 0.3 ... 1.2, four
seeds, 1000 sequences per pair, batches of 1000, 20000 steps.
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import analysis, anchors, experiment, init, models, optim, plot, probes, schedules, simulate, sweep
from engine.errors import COUNT, POSITIVE, Range, require

NAME = "anchor_functions"
PRESETS = {
    "quick": {"vocab": 100, "key_low": 20, "seq_len": 8, "n_per_pair": 1000, "n_test": 200, "data_seed": 0,
              "d_model": 32, "heads": 1, "depths": [2], "gammas": [0.3, 0.6, 1.0], "lr": 1e-3,
              "weight_decay": 0.01, "clip_norm": 1.0, "warmup_fraction": 0.1, "batch_size": 200, "steps": 2000,
              "every": 100, "probe_count": 16, "seeds": 1},
    "paper": {"vocab": 100, "key_low": 20, "seq_len": 8, "n_per_pair": 1000, "n_test": 1000, "data_seed": 0,
              "d_model": 128, "heads": 1, "depths": [2, 3, 4], "gammas": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2],
              "lr": 1e-3, "weight_decay": 0.01, "clip_norm": 1.0, "warmup_fraction": 0.1, "batch_size": 1000,
              "steps": 20000, "every": 500, "probe_count": 32, "seeds": 4},
}
RANGES = {"vocab": COUNT, "key_low": COUNT, "seq_len": COUNT, "n_per_pair": COUNT, "n_test": COUNT,
          "data_seed": Range(0, integer=True), "d_model": COUNT, "heads": COUNT, "depths": COUNT, "gammas": POSITIVE,
          "lr": POSITIVE, "weight_decay": Range(0), "clip_norm": POSITIVE, "warmup_fraction": Range(0, 1, hi_open=True),
          "batch_size": COUNT, "steps": COUNT, "every": COUNT, "probe_count": COUNT}
LEVEL = 0.5  # the fraction (answers) and attention weight (shift, broadcast) a claim asks for


def task(config: dict):
    """(AnchorTable, Dataset, indices of the probe sequences among the training ones)."""
    args = (config["n_per_pair"], config["seq_len"], config["vocab"], config["key_low"], config["data_seed"],
            config["n_test"])
    table = anchors.composite_table(*args)
    n_train = int(table.train.sum())
    require(config["probe_count"] <= n_train, "probe_count", f"{config['probe_count']} > {n_train} training sequences",
            "probe fewer sequences")
    return table, anchors.composite(*args), np.linspace(0, n_train - 1, config["probe_count"]).astype(int)


def fresh_sequences(config: dict):
    """n_test new sequences of the 15 trained pairs (from data seed + 1), for the
    in-distribution accuracy: (tokens [m, seq_len], labels [m])."""
    t = anchors.composite_table(max(1, config["n_test"] // 15), config["seq_len"], config["vocab"], config["key_low"],
                                config["data_seed"] + 1, 1)
    return t.tokens[t.train].astype(np.float32), t.label[t.train]


def build(config: dict):
    """depth -> Simulation (depth changes the parameter tree: one program each)."""
    table, d, probe_idx = task(config)
    x_fresh, y_fresh = fresh_sequences(config)
    require(config["batch_size"] <= d.n, "batch_size", f"{config['batch_size']} > {d.n} training sequences",
            f"use batch_size <= {d.n}")
    opt = optim.adamw(lr=config["lr"], weight_decay=config["weight_decay"], clip_norm=config["clip_norm"],
                      schedule=schedules.warmup_cosine(config["warmup_fraction"] * config["steps"], config["steps"]))

    def at_depth(depth):
        model = models.transformer(vocab=config["vocab"], seq_len=config["seq_len"], d_model=config["d_model"],
                                   heads=config["heads"], depth=int(depth))
        recorded = ("loss", "accuracy", probes.held_out_answers(table),
                    probes.answer_kinds(x_fresh, {"correct": y_fresh}, "fresh_answers"),
                    probes.attention_maps(model, table.tokens[probe_idx].astype(np.float32)),
                    probes.neuron_weights("MultiHeadDotProductAttention_0/query", "w_query"),
                    probes.neuron_weights("MultiHeadDotProductAttention_0/key", "w_key"),
                    probes.neuron_weights("Dense_0", "w_mlp"))
        return simulate.simulation(model, d, "cross_entropy", opt, init.fan_in_power(model, min(config["gammas"])),
                                   steps=config["steps"], every=config["every"], probes=recorded,
                                   batch_size=config["batch_size"])
    return at_depth


def run_sweep(config: dict, **options):
    """One program per depth (static), joined on `depth` by the sweep: the attention
    maps' `block` dim is NaN past a run's depth."""
    return sweep.sweep(build(config), static={"depth": [int(d) for d in config["depths"]]},
                       grid={"gamma": [float(g) for g in config["gammas"]]}, seeds=config["seeds"], **options)


def attention_measures(A: np.ndarray, position: np.ndarray) -> dict:
    """shift and broadcast (module docstring) of attention maps A [..., probe, block, head,
    q, k], the key of probe sequence s at position[s]: {name: [..., block, head]} (NaN for
    the blocks a shallower run lacks)."""
    A = np.moveaxis(np.asarray(A, float), -5, 0)  # [probe, ..., block, head, q, k]
    L = A.shape[-1]
    shift = np.mean([(A[s, ..., p + 1, p] + A[s, ..., p + 2, p + 1]) / 2 for s, p in enumerate(position)], axis=0)
    late = [(s, p) for s, p in enumerate(position) if L - (p + 2) >= 2]
    broadcast = np.mean([A[s, ..., p + 2:, :].mean(-2).max(-1) for s, p in late], axis=0) if late else \
        np.full(shift.shape, np.nan)
    return {"shift": shift, "broadcast": broadcast}


def uniform_attention(seq_len: int) -> np.ndarray:
    """Causal attention spread evenly: A[i, j] = 1/(i+1) for j <= i. [seq_len, seq_len]."""
    return np.tril(np.ones((seq_len, seq_len))) / np.arange(1, seq_len + 1)[:, None]


def measures(ds, config: dict) -> xr.Dataset:
    """Per run at the last record: the held-out answer fractions, the training accuracy,
    the best head's shift and broadcast; their uniform-attention values as attrs."""
    table, _, probe_idx = task(config)
    position = table.position[probe_idx]
    last = ds.isel(step=-1)
    A = last.attention.transpose(..., "probe", "block", "head", "query", "key")
    m = attention_measures(A.values, position)
    rest = [d for d in A.dims if d not in ("probe", "block", "head", "query", "key")]
    coords = {d: A[d] for d in rest}
    kinds = last.held_out_answers
    out = xr.Dataset({"inferential": kinds.sel(held_out_answers_kind="inferential", drop=True),
                      "symmetric": kinds.sel(held_out_answers_kind="symmetric", drop=True),
                      "other": kinds.sel(held_out_answers_kind="other", drop=True), "accuracy": last.accuracy,
                      "fresh_accuracy": last.fresh_answers.sel(fresh_answers_kind="correct", drop=True),
                      "shift": (rest, np.nanmax(m["shift"], (-2, -1))),
                      "broadcast": (rest, np.nanmax(m["broadcast"], (-2, -1)))},
                     coords=coords)
    P = len(position)
    flat = np.broadcast_to(uniform_attention(config["seq_len"]), (P, 1, 1, config["seq_len"], config["seq_len"]))
    base = attention_measures(flat, position)
    out.attrs.update({"uniform_shift": float(base["shift"].max()), "uniform_broadcast": float(base["broadcast"].max())})
    for w in ("query", "key", "mlp"):  # the share of units in the two largest orientation clusters
        out[f"{w}_top2_share"] = analysis.condensation(last[f"w_{w}"], 2, f"w_{w}_neuron", f"w_{w}_fan_in").condensed_share
    return out


def summarize(ds, config: dict) -> dict:
    m = measures(ds, config)
    lo, hi = min(config["gammas"]), max(config["gammas"])
    med = m.median("seed")
    table = {f"depth={d},gamma={g:g}": {k: [round(float(v), 4) for v in m[k].sel(depth=d, gamma=g).values]
                                       for k in m.data_vars}
             for d in m.depth.values for g in m.gamma.values}
    base = {k: m.attrs[f"uniform_{k}"] for k in ("shift", "broadcast")}
    claims = {"every run fits the training pairs (accuracy >= 0.99 at the end)": bool((m.accuracy >= 0.99).all())}
    for d in m.depth.values:
        small, large = med.sel(depth=d, gamma=hi), med.sel(depth=d, gamma=lo)
        claims[f"depth {d}: small init (gamma {hi:g}) answers the held-out pair inferentially "
               f"(median fraction >= {LEVEL}, above the symmetric)"] = \
            bool(small.inferential >= LEVEL and small.inferential > small.symmetric)
        claims[f"depth {d}: large init (gamma {lo:g}) answers it symmetrically (median fraction >= {LEVEL}, "
               "above the inferential)"] = bool(large.symmetric >= LEVEL and large.symmetric > large.inferential)
        for k in ("shift", "broadcast"):
            claims[f"depth {d}, gamma {hi:g}: a head {k}s (median best-head {k} >= {LEVEL} and >= 2x uniform "
                   f"attention's {base[k]:.3f})"] = bool(small[k] >= LEVEL and small[k] >= 2 * base[k])
    return {"per_run": table, "uniform_attention": base,
            "median": {f"depth={d}": {k: {f"{g:g}": round(float(med[k].sel(depth=d, gamma=g)), 4)
                                         for g in m.gamma.values} for k in m.data_vars} for d in m.depth.values},
            "claims": claims}


def figures(ds, config: dict, out_dir) -> list[str]:
    m = measures(ds, config)
    paths = []
    # held-out answers vs gamma, one panel per depth
    depths = list(m.depth.values)
    fig, axes = plot.figure(1, len(depths), (4.2 * len(depths) + 1, 3.6), squeeze=False)
    for ax, d in zip(axes[0], depths):
        for kind, color in (("inferential", "tab:blue"), ("symmetric", "tab:red"), ("other", "tab:gray")):
            da = m[kind].sel(depth=d)
            ax.fill_between(da.gamma, da.min("seed"), da.max("seed"), color=color, alpha=0.2, lw=0)
            ax.plot(da.gamma, da.median("seed"), "o-", color=color, label=kind)
        ax.set(xlabel="initialization rate gamma (std = d_in^-gamma)", ylabel="fraction of held-out (4, 3)",
               title=f"depth {d}", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Held-out pair (4, 3) answers at step {int(ds.step[-1])}\nmedian and range over "
                 f"{ds.sizes['seed']} seed(s)", fontsize=10)
    paths.append(plot.save(fig, f"{out_dir}/anchor_answers_vs_gamma.png"))
    # the answers along training
    tr = ds.sel(step=ds.step > 0, depth=depths[0])
    rows = [{"da": tr.accuracy, "ylabel": "train accuracy"},
            {"da": tr.held_out_answers.sel(held_out_answers_kind="inferential"), "ylabel": "held-out:\ninferential"},
            {"da": tr.held_out_answers.sel(held_out_answers_kind="symmetric"), "ylabel": "held-out:\nsymmetric"}]
    paths.append(plot.panels(f"{out_dir}/anchor_answers_over_training.png", rows, hue="gamma", logx=True,
                             title=f"Anchor composition, depth {depths[0]}: median over {ds.sizes['seed']} seeds"))
    # attention maps of one probe sequence at the end: smallest and largest gamma, every block and head
    table, _, probe_idx = task(config)
    s = int(np.argmin(table.position[probe_idx]))  # the sequence whose key comes first: the longest tail
    tokens = table.tokens[probe_idx[s]]
    last = ds.isel(step=-1, seed=0, probe=s).sel(depth=depths[-1])
    gs = [min(config["gammas"]), max(config["gammas"])]
    L, H = last.sizes["block"], last.sizes["head"]
    fig, axes = plot.figure(len(gs), L * H, (2.6 * L * H + 0.8, 2.8 * len(gs)), squeeze=False)
    labels = [str(int(t)) for t in tokens]
    for r, g in enumerate(gs):
        for c in range(L * H):
            ax = axes[r, c]
            ax.imshow(last.attention.sel(gamma=g).isel(block=c // H, head=c % H).values, cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
            ax.set_title(f"gamma {g:g}, block {c // H}, head {c % H}", fontsize=8)
    fig.suptitle(f"Attention at step {int(ds.step[-1])} (query rows, key columns), depth {depths[-1]}, seed 0\n"
                 f"key {int(table.key[probe_idx[s]])} at position {int(table.position[probe_idx[s]])}, then anchors "
                 f"{', '.join(str(int(a)) for a in table.anchors[probe_idx[s]])}", fontsize=9)
    paths.append(plot.save(fig, f"{out_dir}/anchor_attention.png"))
    return paths


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
