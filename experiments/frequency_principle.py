"""The frequency principle: a network fits the low frequencies of its target first.

Xu, Zhang, Luo, Xiao & Ma 2019/2020, "Frequency Principle: Fourier Analysis Sheds Light
on Deep Neural Networks" (and Xu, Zhang & Xiao 2019, "Training behavior of deep neural
network in frequency domain"). A tanh network is trained with full-batch Adam on
f(x) = sin x + sin 3x + sin 5x at n points evenly spaced on one period [-pi, pi). At every
record step the output h on the training grid is Fourier transformed (DFT), and at each
peak k of the target's spectrum the relative error |h_k - f_k| / |f_k| is recorded.
The claim: the error at a low frequency falls below `tol` before the error at a higher
one -- the steps at which k = 1, 3, 5 converge are in increasing order.

Quick preset: 1-100-100-1 tanh, 64 points, Adam lr 1e-3, 4 seeds, 4000 steps; paper
preset: wider, more points and seeds, the same target. (Their figures use targets of
this kind and fully connected tanh networks; the sizes here are our choice.)
"""
from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from engine import data, experiment, init, models, optim, plot, simulate, sweep
from engine.errors import POSITIVE, require

NAME = "frequency_principle"
PRESETS = {
    "quick": {"frequencies": [1, 3, 5], "n": 64, "widths": [1, 100, 100, 1], "lr": 0.001, "seeds": 4,
              "steps": 4000, "every": 20, "tol": 0.1},
    "paper": {"frequencies": [1, 3, 5], "n": 201, "widths": [1, 500, 500, 1], "lr": 0.0005, "seeds": 16,
              "steps": 20000, "every": 50, "tol": 0.05},
}
RANGES = {"frequencies": POSITIVE, "lr": POSITIVE, "tol": POSITIVE}


def run_sweep(config: dict, **options):
    n = config["n"]
    require(isinstance(n, int) and n > 2 * max(config["frequencies"]), "n", f"got {n!r}",
            f"use more than {2 * max(config['frequencies'])} points so the DFT resolves every frequency")
    d = data.sines(tuple(config["frequencies"]), n, interval=(-np.pi, np.pi - 2 * np.pi / n))  # one period
    model = models.mlp(tuple(config["widths"]), "tanh")
    sim = simulate.simulation(model, d, "mse", optim.adam(lr=config["lr"]), init.scaled(model),
                              steps=config["steps"], every=config["every"], probes=("loss", "prediction"))
    ds = sweep.sweep(sim, grid={}, seeds=config["seeds"], **options)
    return ds.assign(target=("example", np.asarray(d.y)[:, 0]))


def frequency_error(ds, frequencies) -> xr.DataArray:
    """|h_k - f_k| / |f_k| at the target's spectral peaks k: [seed, step, frequency]."""
    h = np.fft.rfft(ds.prediction.isel(output=0).transpose("seed", "step", "example").values, axis=-1)
    f = np.fft.rfft(ds.target.values)
    err = np.abs(h[..., frequencies] - f[frequencies]) / np.abs(f[frequencies])
    return xr.DataArray(err, coords={"seed": ds.seed, "step": ds.step, "frequency": list(frequencies)},
                        dims=("seed", "step", "frequency"), name="relative_error")


def convergence_step(err: xr.DataArray, tol: float) -> xr.DataArray:
    """First record step at which the error falls below `tol` for good: [seed, frequency]."""
    above = (err >= tol).values
    last_above = np.where(above.any(1), above.shape[1] - 1 - np.argmax(above[:, ::-1], axis=1), -1)
    steps = err.step.values
    first_below = np.where(last_above + 1 < steps.size, steps[np.minimum(last_above + 1, steps.size - 1)], np.nan)
    return xr.DataArray(first_below, coords={"seed": err.seed, "frequency": err.frequency},
                        dims=("seed", "frequency"))


def summarize(ds, config: dict) -> dict:
    freqs = config["frequencies"]
    err = frequency_error(ds, freqs)
    conv = convergence_step(err, config["tol"])
    median = [float(conv.sel(frequency=k).median()) for k in freqs]
    ordered = (conv.diff("frequency") > 0).all("frequency")
    return {"convergence_step_median": {str(k): m for k, m in zip(freqs, median)},
            "fraction_of_seeds_in_frequency_order": round(float(ordered.mean()), 3),
            "final_relative_error_median": {str(k): round(float(err.sel(frequency=k).isel(step=-1).median()), 5)
                                            for k in freqs},
            "claims": {f"low frequencies converge first: median steps to error < {config['tol']} increase with k":
                       bool(np.all(np.diff(median) > 0)),
                       "every seed converges in frequency order": bool(ordered.all())}}


def figures(ds, config: dict, out_dir) -> list[str]:
    err = frequency_error(ds, config["frequencies"])
    title = (f"Frequency principle (Xu et al.): {'-'.join(map(str, config['widths']))} tanh, Adam,\n"
             f"target {' + '.join(f'sin {k}x' for k in config['frequencies'])}, median over "
             f"{ds.sizes['seed']} seeds")
    return [plot.lines(err, "step", "frequency", f"{out_dir}/frequency_principle.png", logy=True,
                       ylabel="|h_k - f_k| / |f_k|  (DFT on the training grid)", title=title)]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
