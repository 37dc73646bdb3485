"""Grokking seen in frequency: on the training points a network fits every frequency of
its data early; on the test points it fits the target's frequencies only at grokking,
and in between it carries power at frequencies the target does not have.

Zhou, Zhang & Xu 2024, "A rationale from frequency perspective for grokking in training
neural network" (arXiv 2405.17479), after the frequency principle of Xu et al. 2019/2020
(`experiments.frequency_principle`). Their core claim (abstract): networks first learn
the frequency components that are *less salient in the test data*, and generalize when
the salient ones are learnt. We could read their abstract and introduction only, not
their methods: which tasks, networks, sizes and Fourier transforms (1-d regression,
parity, MNIST, modular arithmetic?) they used, and how they scored a frequency, we could
not pin down. What follows is our own design in their spirit, on the grokking run of
`experiments.grokking` (Power et al. 2022; Nanda et al. 2023).

Task and training are those of `experiments.grokking`: every pair x = (a, b) of Z_p^2
labelled (a + b) mod p, a random `train_fraction` of the pairs for training (drawn once
from `data_seed`), a two-hidden-layer ReLU MLP on the one-hot pairs (or Nanda's
transformer, paper preset), full-batch AdamW (0.9, 0.98), 10-step warmup, softmax
cross-entropy; weight decay and seeds are traced.

The frequency view (our choices). The input grid is Z_p^2 and its frequencies are
k = (k_a, k_b) in Z_p^2. The network's function on the grid is H(x) = softmax f(x) in
[p^2, p] (probabilities, so that it is comparable with the one-hot target Y(x)). For a
point set S (the training pairs, or the test pairs) the Fourier transform on S is the
non-uniform DFT of Xu et al. restricted to the grid,
    F_S[g](k) = sum_{x in S} g(x) exp(-2 pi i k.x / p)   (the DFT of g masked to S),
and the relative error at frequency k is, with the norm over the p classes,
    e_S(k) = || F_S[H - Y](k) || / || F_S[Y](k) ||.
On the whole grid the target's spectrum lives on the diagonal k_a = k_b only (Y_c(a, b)
depends on a + b alone): these p *target frequencies* carry all of the target; indexed
by |k| = min(k_a, p - k_a) (k and -k have equal norms). Every other frequency is absent
from the target: it is present in the training data only because the training pairs
are a random subset (the mask spreads the diagonal over all of Z_p^2), with the opposite
sign on the test pairs; these *off-target frequencies* are the "less salient" ones. The
output's power at them over the grid, P_off = sum_{k off-target} ||F_grid[H](k)||^2, is
read against the target's non-constant power sum_{k target, k != 0} ||F_grid[Y](k)||^2;
a perfect memorizer (H = Y on the training pairs, uniform 1/p elsewhere) has the
`memorizer_off_target_power` reported in the summary.

Our probe `frequency_fit` records ||F_S[H - Y](k)|| for S = train and test, and
||F_grid[H](k)||^2, for every k at every record step; `engine.probes.output_spectrum`
records the logits' power ||F_grid[f](k)||^2, whose few large target frequencies are
Nanda et al.'s key frequencies.

Measured per run: T_train(k) and T_test(k), the record step from which e_S(k) stays
below `tol`, at each target frequency, and their medians over |k| (T_train, T_test);
the same on the training points at the off-target frequencies (median over k); the
test error at the target frequencies (median over |k|) at T_train and at the end, and
the step from which it stays below their geometric mean (the midpoint of its fall, a
threshold-free grokking time); the off-target power at step 0, its peak and the step of
the peak, its value at the end; the logits' share of power per target frequency at the
end (the top five, per seed); t_train and t_test of `experiments.grokking`.

The claims (medians over seeds): (1) on the training points every target frequency is
fitted (e_train < tol) within the run; (2) there the target's frequencies come no
earlier than the rest: the off-target ones are fitted by 1.5 T_train (the network fits
the spectrum of its training data, sampling artefacts included, not the target's
first); (3) on the test points the target frequencies are fitted only at
T_test >= `ratio` x T_train; (4) threshold-free, the test error falls to <= 1/3 of its
value at T_train and passes its midpoint only at >= `ratio` x T_train; (5) the network
first learns frequencies the target lacks: its off-target power rises >= 10x above its
initial value before that midpoint; (6) then it sheds them: at the end the off-target
power is below 1/5 of its peak. Which target frequencies the test points fit first is
reported (`test_fit_step_by_frequency`, `test_midpoint_step_by_frequency`), not
claimed: with one-hot inputs the network does not see the order of Z_p, so "low |k|
first" has no reason to hold here, and at the quick scale it does not: every |k| passes
its midpoint between steps 1680 and 1790.

Quick preset (2-core CPU, about 30 s): p = 31, half the pairs for training, 128-unit
MLP, lr 3e-3, weight decay 3, 6000 steps (the quick grokking preset at its reference
weight decay), 2 seeds, recorded every 20 steps. There claim (3) fails: the test
accuracy ends at 0.96 and the test error at the target frequencies levels off at 0.20,
never below tol = 0.1 (the training points reach 1e-5); the threshold-free (4) holds.
Paper preset: Nanda et al.'s transformer on p = 113 with 30% for training, lr 1e-3,
weight decay 1, 40000 steps (the grokking paper preset; Zhou et al.'s own sizes we
could not pin down), not run here.
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import analysis, data, experiment, optim, plot, probes, schedules, simulate, sweep
from engine.errors import FRACTION, POSITIVE, Range, require
from experiments.grokking import network

NAME = "grokking_frequency"
PRESETS = {
    "quick": {"model": "mlp", "p": 31, "op": "+", "train_fraction": 0.5, "data_seed": 0, "width": 128, "lr": 3e-3,
              "weight_decay": 3.0, "warmup_steps": 10, "seeds": 2, "steps": 6000, "every": 20, "tol": 0.1,
              "ratio": 5.0},
    "paper": {"model": "transformer", "p": 113, "op": "+", "train_fraction": 0.3, "data_seed": 0, "width": 128,
              "lr": 1e-3, "weight_decay": 1.0, "warmup_steps": 10, "seeds": 4, "steps": 40000, "every": 200,
              "tol": 0.1, "ratio": 5.0},
}
RANGES = {"p": Range(3, integer=True), "train_fraction": FRACTION, "data_seed": Range(0, integer=True),
          "width": Range(1, integer=True), "lr": POSITIVE, "weight_decay": Range(0), "warmup_steps": Range(0),
          "tol": POSITIVE, "ratio": Range(1)}
FREQ = ("k_a", "k_b")


def table(config: dict) -> data.ModularTable:
    require(config["op"] in ("+", "-"), "op", f"got {config['op']!r}: its target is not sparse over the "
            "frequencies of Z_p^2", "use '+' or '-'")
    return data.modular_table(config["p"], config["op"], config["train_fraction"], config["data_seed"])


def grid_arrays(t: data.ModularTable):
    """The one-hot targets Y [p, p, p] (a, b, class) and the training mask [p, p, 1]."""
    p = t.p
    return data.one_hot(t.label, p).reshape(p, p, p), t.train.reshape(p, p, 1).astype(np.float32)


def frequency_fit(t: data.ModularTable, encoding: str) -> probes.Probe:
    """train_residual, test_residual: ||F_S[H - Y](k)|| for S = the training / test pairs;
    output_power: ||F_grid[H](k)||^2; H = softmax of the network on every pair. Dims
    (k_a, k_b) (`probes.residual_spectrum`)."""
    return probes.residual_spectrum(data.modular_inputs(t.a, t.b, t.p, encoding), data.one_hot(t.label, t.p),
                                    t.train, (t.p, t.p), dims=FREQ)


def run_sweep(config: dict, **options):
    t = table(config)
    encoding = "one_hot" if config["model"] == "mlp" else "tokens"
    d = data.modular(config["p"], config["op"], config["train_fraction"], config["data_seed"], encoding)
    opt = optim.adamw(lr=config["lr"], b1=0.9, b2=0.98, schedule=schedules.warmup(float(config["warmup_steps"])))
    logits = probes.output_spectrum(data.modular_inputs(t.a, t.b, t.p, encoding), (t.p, t.p), name="logit_power")
    sim = simulate.simulation(network(config), d, "cross_entropy", opt, steps=config["steps"], every=config["every"],
                              probes=("loss", "accuracy", "test_loss", "test_accuracy", frequency_fit(t, encoding),
                                      logits))
    ds = sweep.sweep(sim, grid={"weight_decay": [float(config["weight_decay"])]}, seeds=config["seeds"], **options)
    ds = ds.assign(logit_power=ds.logit_power.rename(logit_power_k0="k_a", logit_power_k1="k_b"))
    y, mask = grid_arrays(t)
    spectra = {f"target_{s}": (FREQ, probes.grid_spectrum_norm(y, m, np)) for s, m in
               (("train", mask), ("test", 1 - mask), ("grid", 1.0))}
    memorizer = np.where(mask > 0, y, 1.0 / t.p)  # fits the training pairs, knows nothing else
    return ds.assign(**spectra, memorizer_power=(FREQ, probes.grid_spectrum_norm(memorizer, 1.0, np) ** 2))


def target_frequencies(ds) -> xr.DataArray:
    """True where the target's spectrum over the whole grid is not zero: [k_a, k_b]."""
    return ds.target_grid > 1e-4 * float(ds.target_grid.max())


def folded(da: xr.DataArray, target: xr.DataArray) -> xr.DataArray:
    """`da` at the target frequencies, one per |k| = min(k_a, p - k_a) = 0 .. (p-1)/2:
    da's dims with (k_a, k_b) replaced by "frequency"."""
    p = target.sizes["k_a"]
    ka = np.arange((p - 1) // 2 + 1)
    kb = target.values[ka].argmax(-1)  # the target frequency in row k_a (the diagonal, for a + b)
    pick = {"k_a": xr.DataArray(ka, dims="frequency"), "k_b": xr.DataArray(kb, dims="frequency")}
    return da.isel(pick).drop_vars(["k_a", "k_b"]).assign_coords(frequency=ka)


def relative_errors(ds) -> xr.Dataset:
    """e_S(k) = ||F_S[H - Y](k)|| / ||F_S[Y](k)|| at every frequency, S = train, test."""
    return xr.Dataset({"train": ds.train_residual / ds.target_train, "test": ds.test_residual / ds.target_test})


def settled_step(err: xr.DataArray, tol) -> xr.DataArray:
    """The first record step from which `err` stays below `tol` (NaN if it never does)."""
    return analysis.settled_time(err < tol)


def off_target_power(ds) -> xr.DataArray:
    """sum_{k off-target} ||F_grid[H](k)||^2 / sum_{k target, k != 0} ||F_grid[Y](k)||^2."""
    target = target_frequencies(ds)
    scale = float((ds.target_grid ** 2).where(target).sum()) - float(ds.target_grid[0, 0] ** 2)
    return ds.output_power.where(~target).sum(FREQ) / scale


def logit_share(ds) -> xr.DataArray:
    """The share of the logits' non-constant power over the grid at each target
    frequency |k| (k and -k together): [..., step, frequency]."""
    total = ds.logit_power.sum(FREQ) - ds.logit_power.isel(k_a=0, k_b=0, drop=True)
    share = folded(ds.logit_power, target_frequencies(ds)) / total
    return (share * xr.where(share.frequency > 0, 2, 0)).rename("logit_share")


def measures(ds, config: dict) -> xr.Dataset:
    """Per run (seed, weight_decay): the steps at which the target frequencies settle on
    the training and test points (per |k| and median over |k|), the test error's fall,
    the off-target power's course, the logits' key frequencies, t_train and t_test."""
    target = target_frequencies(ds)
    err = relative_errors(ds)
    fit = {s: settled_step(folded(err[s], target), config["tol"]) for s in ("train", "test")}
    t_fit = fit["train"].median("frequency")
    steps = xr.DataArray(ds.step.values, dims="step", coords={"step": ds.step})

    def midpoint(e):  # the step from which e stays below the geometric midpoint of its fall
        e = e.transpose(..., "step")
        at_fit, final = e.where(steps == t_fit).max("step"), e.isel(step=-1, drop=True)
        return at_fit, final, settled_step(e, np.sqrt(at_fit * final))
    per_k = folded(err.test, target)
    at_fit, final, mid = midpoint(per_k.median("frequency"))
    power = off_target_power(ds).transpose(..., "step")
    share = logit_share(ds).isel(step=-1, drop=True)
    return xr.Dataset({
        "train_fit_step": t_fit, "train_fit_step_last": fit["train"].max("frequency", skipna=False),
        "train_fit_step_off_target": settled_step(err.train.where(~target).median(FREQ), config["tol"]),
        "test_fit_step": fit["test"].median("frequency"), "test_fit_step_last": fit["test"].max("frequency", skipna=False),
        "test_fit_step_by_frequency": fit["test"], "test_midpoint_step_by_frequency": midpoint(per_k)[2],
        "test_error_at_train_fit": at_fit, "test_error_final": final, "test_midpoint_step": mid,
        "off_target_power_initial": power.isel(step=0, drop=True), "off_target_power_peak": power.max("step"),
        "off_target_power_peak_step": steps[power.fillna(-1).argmax("step")].drop_vars("step"),
        "off_target_power_before_test_midpoint": power.where(steps < mid.fillna(np.inf)).max("step"),
        "off_target_power_final": power.isel(step=-1, drop=True),
        "logit_target_share_final": share.sum("frequency") - share.sel(frequency=0, drop=True),
        "logit_share_final": share,
        "t_train": analysis.first_time(ds.accuracy >= 0.99),
        "t_test": analysis.first_time(ds.test_accuracy >= 0.95),
        "final_test_accuracy": ds.test_accuracy.isel(step=-1, drop=True)})


PER_FREQUENCY = ("test_fit_step_by_frequency", "test_midpoint_step_by_frequency", "logit_share_final")


def _num(v):
    v = float(v)
    return None if np.isnan(v) else round(v, 5)


def summarize(ds, config: dict) -> dict:
    m = measures(ds, config).isel(weight_decay=0)
    scalars = [k for k in m.data_vars if k not in PER_FREQUENCY]
    med = {k: _num(m[k].median("seed")) for k in scalars}
    nan = lambda k: np.nan if med[k] is None else med[k]
    key = {str(int(s)): [int(k) for k in m.frequency.values[np.argsort(-m.logit_share_final.sel(seed=s).values)][:5]]
           for s in m.seed.values}
    tol, ratio = config["tol"], config["ratio"]
    return {
        "per_seed": {k: [_num(v) for v in m[k].values] for k in scalars},
        "median": med,
        **{name: {str(int(k)): _num(m[name].sel(frequency=k).median("seed")) for k in m.frequency.values}
           for name in PER_FREQUENCY[:2]},
        "logit_key_frequencies_by_seed": key,
        "memorizer_off_target_power": round(_memorizer_off_target(ds), 5),
        "note": (f"the test error at the target frequencies ends at {med['test_error_final']} > tol {tol:g} "
                 f"(test accuracy {med['final_test_accuracy']}): the test points are never fitted at tol, so "
                 "T_test is undefined; the midpoint claim reads the same run without a threshold"
                 if not nan("test_error_final") < tol else "the test points are fitted at tol"),
        "claims": {
            f"on the training points every target frequency is fitted (relative error < {tol:g})":
                bool(np.isfinite(m.train_fit_step_last.values).all()),
            "on the training points the target's frequencies come no earlier than the rest: the off-target ones "
            "are fitted by 1.5 T_train": bool(nan("train_fit_step_off_target") <= 1.5 * nan("train_fit_step")),
            f"on the test points only much later: median T_test >= {ratio:g} T_train at the same {tol:g}":
                bool(nan("test_fit_step") >= ratio * nan("train_fit_step")),
            f"grokking per frequency, threshold-free: the test error falls to <= 1/3 of its value at T_train, "
            f"past its geometric midpoint only at >= {ratio:g} T_train":
                bool(nan("test_error_final") <= nan("test_error_at_train_fit") / 3
                     and nan("test_midpoint_step") >= ratio * nan("train_fit_step")),
            "first the network learns frequencies the target lacks: its off-target power rises >= 10x above "
            "its initial value before the test midpoint": bool(nan("off_target_power_before_test_midpoint")
                                                               >= 10 * nan("off_target_power_initial")),
            "then it sheds them: the final off-target power is below 1/5 of its peak":
                bool(nan("off_target_power_final") < nan("off_target_power_peak") / 5)}}


def _memorizer_off_target(ds) -> float:
    """The off-target power of the perfect memorizer (H = Y on the training pairs, 1/p
    elsewhere), on the scale of `off_target_power`."""
    return float(off_target_power(ds.assign(output_power=ds.memorizer_power)))


def _heat(ax, da, label, title, **options):
    import matplotlib.pyplot as plt
    mesh = ax.pcolormesh(da.step.values, da.frequency.values, da.transpose("frequency", "step").values,
                         shading="nearest", **options)
    plt.colorbar(mesh, ax=ax, label=label)
    ax.set(ylabel="target frequency |k|", title=title)


def figures(ds, config: dict, out_dir) -> list[str]:
    ds = ds.isel(weight_decay=0)
    target, tol = target_frequencies(ds), config["tol"]
    late = ds.sel(step=ds.step > 0)
    err = relative_errors(late)
    fig, axes = plot.figure(5, 1, (7.5, 14.5), sharex=True)
    for ax, s, where in ((axes[0], "train", "training"), (axes[1], "test", "test")):
        e = folded(err[s], target).median("seed")
        _heat(ax, np.log10(e), "log10 |F[H - Y](k)| / |F[Y](k)|", f"relative error on the {where} points "
              f"(median over {ds.sizes['seed']} seeds; cyan: {tol:g})", cmap="magma_r", vmin=np.log10(tol) - 1,
              vmax=0.5)
        ax.contour(e.step.values, e.frequency.values, e.transpose("frequency", "step").values, levels=[tol],
                   colors="c", linewidths=1)
    share = logit_share(late).isel(seed=0)
    _heat(axes[2], share, "share of the logits' power", f"logits' power over the grid per target frequency "
          f"(seed {int(share.seed)})", cmap="viridis", vmin=0)
    lines = {"train, target k": err.train.where(target), "test, target k": err.test.where(target),
             "train, off-target k": err.train.where(~target), "test, off-target k": err.test.where(~target)}
    for (label, da), style in zip(lines.items(), ("C0-", "C3-", "C0:", "C3:")):
        axes[3].plot(da.step, da.median(FREQ).median("seed"), style, label=label)
    axes[3].axhline(tol, color="c", lw=1)
    axes[3].set(yscale="log", ylabel="relative error\n(median over k)")
    axes[3].legend(fontsize=7)
    power = off_target_power(late)
    axes[4].plot(power.step, power.median("seed"), "k-", label="off-target power of H over the grid")
    axes[4].axhline(_memorizer_off_target(ds), color="k", ls="--", lw=1, label="that of a perfect memorizer")
    twin = axes[4].twinx()
    for name, c in (("accuracy", "C0"), ("test_accuracy", "C3")):
        twin.plot(late.step, late[name].median("seed"), c, lw=1, alpha=0.7, label=name.replace("_", " "))
    twin.set_ylabel("accuracy")
    axes[4].set(yscale="log", xscale="log", xlabel="step", ylabel="off-target power\n/ target power")
    axes[4].legend(fontsize=7, loc="upper left")
    twin.legend(fontsize=7, loc="lower right")
    for ax in axes[3:]:
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Grokking in frequency: {config['model']} on (a {config['op']} b) mod {config['p']}, "
                 f"{config['train_fraction']:g} of the pairs for training, AdamW wd {config['weight_decay']:g}")
    return [plot.save(fig, f"{out_dir}/grokking_frequency.png")]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
