"""The catapult phase: wide networks trained with a step size above 2/lambda_0.

Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020, "The large learning rate phase
of deep learning: the catapult mechanism". A wide two-layer network in the NTK
parameterization, f(x) = W2 relu(W1 x / sqrt(d)) / sqrt(m) with N(0, 1) weights, is
trained by full-batch GD on L = 1/n sum_i 1/2 ||f(x_i) - y_i||^2. With lambda_0 the top
eigenvalue of the NTK (of L's Hessian at initialization, which equals it up to
O(1/sqrt(m)) in a wide network):
    eta lambda_0 < 2        lazy: the loss falls monotonically, the curvature stays put;
    2 < eta lambda_0 < c    catapult: the loss first grows by orders of magnitude, the
                            curvature falls until eta lambda < 2, then training converges;
    eta lambda_0 > c        divergence.
They find c = 4 for the two-layer linear (uv) model and c ~ 12 for ReLU networks.

lambda_0 is measured in each run (sharpness at step 0, Lanczos), so each run's
eta lambda_0 is exact; the grid of learning rates is eta = target / median(lambda_0),
the median over seeds taken from a one-step pilot sweep.

Quick preset: width 1024 on the first 64 digits (64 pixels, one-hot targets), records
every 3 steps; paper preset: width 8192 on 512 digits (their MNIST/CIFAR subsets are not shipped; any .npz
can be passed with --set data=PATH).
"""
from __future__ import annotations

import sys

import numpy as np

from engine import experiment, init, models, optim, plot, probes, simulate, sweep
from engine.errors import require
from experiments.edge_of_stability import training_set

NAME = "catapult"
PRESETS = {
    "quick": {"data": "digits", "n_train": 64, "width": 1024, "seeds": 2, "steps": 300, "every": 3,
              "targets": [0.5, 1.0, 1.5, 1.9, 2.2, 2.4, 2.6, 2.8, 3.0, 3.5, 4.0, 6.0, 8.0, 12.0]},
    "paper": {"data": "digits", "n_train": 512, "width": 8192, "seeds": 4, "steps": 1000, "every": 2,
              "targets": list(np.round(np.linspace(0.25, 16.0, 64), 3))},
}


def build(config: dict, steps: int | None = None, every: int | None = None) -> simulate.Simulation:
    d = training_set(config["data"], config["n_train"])
    model = models.mlp((d.x.shape[1], config["width"], d.y.shape[1]), "relu", parameterization="ntk")
    sharp = probes.sharpness(iters=20, warm_iters=10)
    # a loss 1e10 times the ~0.5 it starts at does not come back: flag it as diverged
    return simulate.simulation(model, d, "mse", optim.gd(), init.scaled(model), steps=steps or config["steps"],
                               every=every or config["every"], probes=("loss", sharp), diverge_above=1e10)


def run_sweep(config: dict):
    require(isinstance(config["targets"], list) and len(config["targets"]) >= 1, "targets",
            f"got {config['targets']!r}", "give a list of eta * lambda_0 values, e.g. [1.0, 3.0]")
    pilot = sweep.sweep(build(config, steps=1, every=1), grid={"lr": [1e-9]}, seeds=config["seeds"], progress=False)
    lambda0 = float(pilot.sharpness.isel(step=0).median())
    ds = sweep.sweep(build(config), grid={"lr": [t / lambda0 for t in config["targets"]]},
                     seeds=config["seeds"], progress=config.get("progress"))
    return ds.assign_coords(target=("lr", [float(t) for t in config["targets"]]))


def measures(ds):
    """Per run: eta lambda_0, peak loss / initial loss, eta * final sharpness, final loss."""
    initial = ds.loss.isel(step=0)
    out = {
        "eta_lambda0": ds.lr * ds.sharpness.isel(step=0),
        "peak_over_initial_loss": ds.loss.max("step") / initial,
        "eta_final_sharpness": ds.lr * ds.sharpness.isel(step=-1),
        "final_over_initial_loss": ds.loss.isel(step=-1) / initial,
    }
    return {k: v.transpose(*ds.diverged.dims) for k, v in out.items()}


def summarize(ds, config: dict) -> dict:
    m = measures(ds)
    rows = {}
    for i, t in enumerate(ds.target.values):
        sel = dict(lr=ds.lr.values[i])
        rows[f"{t:g}"] = {k: round(float(v.sel(sel).median()), 4) for k, v in m.items()} | {
            "diverged_fraction": round(float(ds.diverged.sel(sel).mean()), 3)}
    lazy = [r for t, r in rows.items() if float(t) < 1.8]
    catapult = [r for t, r in rows.items() if 2.3 <= float(t) <= 2.9]
    converged = [float(t) for t, r in rows.items()
                 if r["diverged_fraction"] == 0 and r["final_over_initial_loss"] < 1]
    diverged = [float(t) for t, r in rows.items() if r["diverged_fraction"] == 1]
    return {
        "lambda0_median": round(float(ds.sharpness.isel(step=0).median()), 4),
        "per_target": rows,
        "largest_eta_lambda0_that_converged": max(converged) if converged else None,
        "smallest_eta_lambda0_that_diverged": min(diverged) if diverged else None,
        "claims": {
            "lazy (eta lambda_0 < 1.8): the loss never rises (peak <= 1.01 x initial)":
                all(r["peak_over_initial_loss"] <= 1.01 for r in lazy),
            "catapult (2.3 <= eta lambda_0 <= 2.9): the loss rises > 10x, then the curvature "
            "falls to 2/eta or below and training converges (final loss < initial)":
                all(r["peak_over_initial_loss"] > 10 and r["eta_final_sharpness"] < 2.02
                    and r["final_over_initial_loss"] < 1 and r["diverged_fraction"] == 0 for r in catapult),
            "large enough eta lambda_0 diverges": bool(diverged),
        },
    }


def figures(ds, config: dict, out_dir) -> list[str]:
    import matplotlib.pyplot as plt
    m = measures(ds)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4), constrained_layout=True)
    x = m["eta_lambda0"].values.ravel()
    dead = ds.diverged.values.ravel()
    peak = m["peak_over_initial_loss"].values.ravel()
    ax.semilogy(x[~dead], peak[~dead], "o", ms=4, label="converged or still training")
    ax.semilogy(x[dead], np.full(dead.sum(), np.nanmax(peak[~dead]) * 3 if (~dead).any() else 10), "x",
                color="C3", label="diverged (drawn at the top)")
    ax.set(xlabel="eta * lambda_0", ylabel="peak loss / initial loss", title="how far the loss is catapulted")
    bx.plot(x[~dead], m["eta_final_sharpness"].values.ravel()[~dead], "o", ms=4)
    lim = float(np.nanmax(x))
    bx.plot([0, 2], [0, 2], "k:", lw=1, label="eta lambda_final = eta lambda_0")
    bx.axhline(2, color="k", ls="--", lw=1, label="2 (stability of GD)")
    bx.set(xlabel="eta * lambda_0", ylabel="eta * final sharpness", xlim=(0, lim * 1.05),
           title="curvature at the end of training")
    for a in (ax, bx):
        a.axvline(2, color="grey", lw=0.8)
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    fig.suptitle(f"Two-layer ReLU, NTK parameterization, width {config['width']}, {config['data']} "
                 f"(n = {ds.attrs.get('n_train', config['n_train'])}): catapult (Lewkowycz et al. 2020)")
    path = f"{out_dir}/catapult.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    curves = plot.lines(ds.loss.isel(seed=0).assign_coords(lr=ds.target.values).rename(lr="eta_lambda0_target"),
                        "step", "eta_lambda0_target", f"{out_dir}/catapult_loss.png", over=None, logy=True,
                        ylabel="train loss (seed 0)", title="loss curves per eta * lambda_0 target")
    return [path, curves]


if __name__ == "__main__":
    experiment.main(sys.modules[__name__])
