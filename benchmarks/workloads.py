"""The workloads: each runs the engine and its baseline and returns `report.Record`s.

`WORKLOADS[name](quick, peak)` -> list of records; `quick` shrinks runs and steps but
runs the same code paths; `peak` is the GEMM rate `peak_fraction` is measured against.
Each workload attaches the goals of the performance issue (2-core CPU) to the records
they apply to, where it creates them: phase_sweep's "auto" speedup >= 10 over the loop;
digits_mlp's "auto" peak_fraction >= 0.8; a lone HVP hvp_over_grad <= 2.5; the tiny
edge-of-stability sweep speedup >= 100 over the eigsh loop, the digits one >= 3; every
probed sweep probe_cost <= 1.5 over the same sweep bare (`PROBE_COST`); a learning-rate
schedule >= 0.95 of the constant rate's speed; the sharpness every 50 steps beside the
loss every 10 probe_cost <= 1.3.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from benchmarks.baselines import eigsh_loop, per_run_scan, user_loop
from benchmarks.measure import (engine_record, hvps_per_warm_probe, measured, picked, plan_memory_mb, timed,
                                train_flops_per_step, xla_gradient_flops)
from benchmarks.report import Goal, Record
from engine import curvature, data, init, losses, models, optim, probes, schedules, simulate, sweep

PROBE_COST = Goal("probe_cost", "<=", 1.5)  # a probed sweep against the same sweep bare
DIGITS = dict(layers="64-200-200-10", network="mlp_64-200-200-10_tanh_digits")


def phase_sweep(quick: bool, peak: float) -> list[Record]:
    """Two-layer ReLU, width 4000 (1000 in --quick), Luo's three points, 256 runs
    (gamma x seeds), GD."""
    (width, steps), seeds = ((1000, 400) if quick else (4000, 2000)), 8
    model = models.mlp((1, width, 1), "relu", output_bias=False)
    scheme = init.luo(model)
    sim = simulate.simulation(model, data.luo_points(), "mse", optim.gd(lr=0.05), scheme,
                              steps=steps, every=100, probes=("loss", "relative_change_layer"))
    grid = {"gamma": [float(g) for g in np.linspace(0.25, 1.75, 32)]}
    hp = {"gamma": 1.0, "gamma_prime": 0.0}
    base = user_loop(model, scheme, sim.data, optax.sgd(0.05), hp, steps=200, runs=4 if quick else 16)
    return [engine_record("phase_sweep", sim, grid, seeds, strategy, peak, "loop", base, mb, width=width,
                          goal=Goal("speedup", ">=", 10.0) if strategy == "auto" else None)
            for strategy, mb in (("auto", None), ("vmap", None), ("map", None), ("map", 8))]


def digits_mlp(quick: bool, peak: float) -> list[Record]:
    """MLP 64-200-200-10 tanh on the 1797 digits, MSE, GD (matrix-multiply bound)."""
    steps, seeds = (40 if quick else 500), (2 if quick else 8)
    model = models.mlp((64, 200, 200, 10), "tanh")
    scheme = init.scaled(model)
    sim = simulate.simulation(model, data.digits(), "mse", optim.gd(lr=0.05), scheme,
                              steps=steps, every=steps // 4, probes=("loss",))
    grid = {"lr": [0.02, 0.05] if quick else [0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08]}
    hp = {"init_scale": 1.0}
    runs = len(grid["lr"]) * seeds
    base = per_run_scan(model, scheme, sim.data, optax.sgd(0.05), hp, steps, runs)
    # auto picks map(batch=1) on CPU
    return [engine_record("digits_mlp", sim, grid, seeds, strategy, peak, "scan", base, layers=DIGITS["layers"],
                          goal=Goal("peak_fraction", ">=", 0.8) if strategy == "auto" else None)
            for strategy in ("auto", "vmap")]


def batching(quick: bool, peak: float) -> list[Record]:
    """How to batch tiny runs on this machine: two-layer ReLU on three points, 256
    runs, each width with one wide vmap (the baseline) and lax.map over groups of b."""
    widths, steps = ((30, 1000), 200) if quick else ((30, 100, 300, 1000, 4000), 1000)
    grid = {"gamma": [float(g) for g in np.linspace(0.5, 1.5, 32)]}
    out = []
    for width in widths:
        model = models.mlp((1, width, 1), "relu", output_bias=False)
        sim = simulate.simulation(model, data.luo_points(), "mse", optim.gd(lr=0.05), init.luo(model),
                                  steps=steps, every=steps // 10, probes=("loss",))
        base = engine_record("batching", sim, grid, 8, "vmap", peak, "vmap", 1.0).engine_run_steps_per_s
        for strategy, b in (("map", None), ("map", 2), ("map", 8), ("map", 32), ("auto", None)):
            out.append(engine_record("batching", sim, grid, 8, strategy, peak, "vmap", base, b, width=width))
    return out


def _models():
    """(name, model, data) of the workloads' networks."""
    return [("two_layer_relu_w1000_luo", models.mlp((1, 1000, 1), "relu"), data.luo_points()),
            ("mlp_1-100-1_tanh_chebyshev", models.mlp((1, 100, 1), "tanh"), data.chebyshev(3, 20)),
            (DIGITS["network"], models.mlp((64, 200, 200, 10), "tanh"), data.digits())]


def unit(tree):
    """`tree` divided by its norm as one flat vector."""
    return jax.tree.map(lambda x: x / jnp.linalg.norm(ravel_pytree(tree)[0]), tree)


def _axpy(a, x, y):
    return jax.tree.map(lambda u, w: u + a * w, y, x)


def grad_loop(loss_fn, reps: int):
    """params -> params after `reps` gradient steps theta <- theta - 1e-6 grad (a timed loop)."""
    return lambda p: jax.lax.fori_loop(0, reps, lambda i, p: _axpy(-1e-6, jax.grad(loss_fn)(p), p), p)


def hvp_loop(loss_fn, reps: int, mode: str, fixed_params: bool = False):
    """(params, v) -> `reps` power-iteration steps v <- Hv/|Hv|: a lone HVP each, theta
    moving by 1e-9 v every step so that nothing can be hoisted; or at fixed theta, as
    inside one Lanczos solve."""
    if fixed_params:
        return lambda p, v: jax.lax.fori_loop(0, reps, lambda i, v: unit(curvature.hvp(loss_fn, p, v, mode)), v)

    def body(i, c):
        p, v = c
        v = unit(curvature.hvp(loss_fn, p, v, mode))
        return _axpy(1e-9, v, p), v
    return lambda p, v: jax.lax.fori_loop(0, reps, body, (p, v))


def hvp_cost(quick: bool, peak: float) -> list[Record]:
    """One Hessian-vector product over one gradient, each mode, for each network, timed
    as loops on the device so that dispatch does not count: gradient descent
    theta <- theta - 1e-6 grad, against power iteration v <- Hv/|Hv| (a) while theta
    moves by 1e-9 v each step (a lone HVP) and (b) at fixed theta, as inside one
    Lanczos solve, where XLA may hoist the linearization out of the loop."""

    out = []
    reps = 50 if quick else 500
    for name, model, d in _models():
        params = model.init(jax.random.key(0))
        loss_fn = lambda p: losses.mse(model.apply(p, d.x), d.y)
        descend = jax.jit(grad_loop(loss_fn, reps))
        t_c = time.perf_counter()
        jax.block_until_ready(descend(params))
        compile_s = time.perf_counter() - t_c
        t_grad = min(timed(lambda: jax.block_until_ready(descend(params))) for _ in range(3)) / reps
        v0 = unit(jax.tree.map(jnp.ones_like, params))
        grad_flops = _cost(jax.jit(jax.grad(loss_fn)).lower(params).compile())["flops"]
        for mode in curvature.HVP_MODES:
            lone, fixed = hvp_loop(loss_fn, reps, mode), hvp_loop(loss_fn, reps, mode, fixed_params=True)
            for tag, f, goal in (("", lone, Goal("hvp_over_grad", "<=", 2.5)), ("_fixed_params", fixed, None)):
                xla = xla_cost_ratios(descend, (params,), jax.jit(f), (params, v0))
                f = jax.jit(f)
                jax.block_until_ready(f(params, v0))
                t_hvp = min(timed(lambda: jax.block_until_ready(f(params, v0))) for _ in range(3)) / reps
                out.append(measured("hvp", 1, reps, mode + tag, None, 1 / t_hvp, "grad", 1 / t_grad, peak,
                                    compile_s, hvp_over_grad=round(t_hvp / t_grad, 3), network=name, goal=goal,
                                    extra=dict(grad_us=round(t_grad * 1e6, 2), hvp_us=round(t_hvp * 1e6, 2),
                                               grad_gflops=round(grad_flops / t_grad / 1e9, 3), **xla)))
    return out


def _cost(compiled) -> dict:
    c = compiled.cost_analysis()
    return c[0] if isinstance(c, list) else c


def xla_cost_ratios(grad_loop, grad_args, hvp_loop, hvp_args) -> dict:
    """What XLA's compiler says the timed HVP loop costs over the timed gradient loop:
    flop and bytes-accessed counts (`cost_analysis`, loop bodies counted once) and the
    number of HLO instructions, the unit of fixed per-op cost that dominates tiny
    models on CPU."""
    g, h = grad_loop.lower(*grad_args).compile(), hvp_loop.lower(*hvp_args).compile()
    ops = lambda c: sum(1 for line in c.as_text().splitlines() if " = " in line)
    cg, ch = _cost(g), _cost(h)
    return {"xla_flops_ratio": round(ch["flops"] / cg["flops"], 3),
            "xla_bytes_ratio": round(ch["bytes accessed"] / cg["bytes accessed"], 3),
            "hlo_ops_ratio": round(ops(h) / ops(g), 3)}


def sharpness_overhead(quick: bool, peak: float) -> list[Record]:
    """Tiny edge-of-stability sweep: 1-100-1 tanh on chebyshev-3-20, 256 runs (lr x seeds),
    GD, sharpness every 10 steps (Lanczos 20 cold / 10 warm, each on to residual 1e-3);
    against the same sweep bare and against the eigsh loop; and the same for the digits
    MLP."""
    out = []
    tiny = dict(workload="tiny_eos", model=models.mlp((1, 100, 1), "tanh"), d=data.chebyshev(3, 20),
                grid={"lr": [float(x) for x in np.linspace(0.05, 0.4, 32)]}, seeds=1 if quick else 8,
                layers="1-100-1", network="mlp_1-100-1_tanh_chebyshev", eigsh_goal=Goal("speedup", ">=", 100.0),
                steps=100 if quick else 2000, base_runs=1 if quick else 2, base_steps=100 if quick else 200)
    digits = dict(workload="digits_eos", model=models.mlp((64, 200, 200, 10), "tanh"), d=data.digits(),
                  grid={"lr": [0.02, 0.05] if quick else [0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08]},
                  seeds=1 if quick else 2, steps=20 if quick else 500, base_runs=1, base_steps=20 if quick else 100,
                  eigsh_goal=Goal("speedup", ">=", 3.0), **DIGITS)
    for w in (tiny, digits):
        scheme = init.scaled(w["model"])
        make = lambda probe_list: simulate.simulation(w["model"], w["d"], "mse", optim.gd(), scheme,
                                                      steps=w["steps"], every=10, probes=probe_list)
        variants = {"bare": ("loss",),
                    "sharpness": ("loss", probes.sharpness(iters=20, warm_iters=10)),
                    # early stopping: each solve stops once its residual is below 1e-3, from
                    # 2 products on, at most 20
                    "sharpness_tol1e-3": ("loss", probes.sharpness(iters=2, warm_iters=2, tol=1e-3, max_iters=20,
                                                                   max_warm_iters=20))}
        runs = w["seeds"] * len(w["grid"]["lr"])
        results = {}
        for tag, probe_list in variants.items():
            sim = make(probe_list)
            ds = sweep.sweep(sim, grid=w["grid"], seeds=w["seeds"], progress=False)
            plan = sweep.config_of(ds)["plans"][0]
            results[tag] = (runs * sim.steps / plan["seconds"]["run"], plan, hvps_per_warm_probe(ds), sim)
        base = eigsh_loop(w["model"], scheme, w["d"], 0.1, {"init_scale": 1.0}, w["base_steps"], 10, w["base_runs"])
        bare_rate = results["bare"][0]
        for tag in ("sharpness", "sharpness_tol1e-3"):
            rate, plan, products, sim = results[tag]
            common = dict(flops_per_step=train_flops_per_step(sim), memory_mb=plan_memory_mb(plan),
                          probe_cost=round(bare_rate / rate, 3), hvps_per_warm_probe=products, probe=tag,
                          layers=w["layers"], network=w["network"], every=10)
            against = [("eigsh_loop", base, w["eigsh_goal"])] if tag == "sharpness" else []
            for baseline, base_rate, goal in against + [("bare_sweep", bare_rate, PROBE_COST)]:
                out.append(measured(w["workload"], runs, sim.steps, None, picked(plan), rate, baseline, base_rate,
                                    peak, plan["seconds"]["compile"], goal=goal, **common))
    return out


def adam_curvature(quick: bool, peak: float) -> list[Record]:
    """Workload 3's MLP with full-batch Adam, preconditioned sharpness and preconditioned
    directional curvature every 10 steps, against the same Adam sweep bare."""
    model = models.mlp((64, 200, 200, 10), "tanh")
    steps, seeds = (20, 1) if quick else (200, 2)
    grid = {"lr": [1e-3, 2e-3] if quick else [5e-4, 1e-3, 2e-3, 4e-3]}
    make = lambda probe_list: simulate.simulation(model, data.digits(), "mse", optim.adam(), init.scaled(model),
                                                  steps=steps, every=10, probes=probe_list)
    bare = make(("loss",))
    probed = make(("loss", "preconditioned_sharpness", "preconditioned_directional_curvature"))
    base = engine_record("adam_bare", bare, grid, seeds, "auto", peak, "-", 1.0).engine_run_steps_per_s
    rec = engine_record("adam_curvature", probed, grid, seeds, "auto", peak, "bare_sweep", base, every=10,
                        goal=PROBE_COST, **DIGITS)
    return [dataclasses.replace(rec, probe_cost=round(base / rec.engine_run_steps_per_s, 3))]


def scaling(quick: bool, peak: float) -> list[Record]:
    """Workload 1's shape (two-layer ReLU on Luo's points, width 4000; 1000 in --quick) as
    the number of runs grows; throughput should grow until the cores are busy, memory
    linearly (`estimated_memory_mb`: the engine's own estimate for the chunk)."""
    width, steps = (1000, 100) if quick else (4000, 500)
    model = models.mlp((1, width, 1), "relu", output_bias=False)
    sim = simulate.simulation(model, data.luo_points(), "mse", optim.gd(lr=0.05), init.luo(model),
                              steps=steps, every=100, probes=("loss", "relative_change_layer"))
    out = []
    for runs in ((1, 4, 16, 64) if quick else (1, 4, 16, 64, 256, 1024)):
        grid = {"gamma": [float(g) for g in np.linspace(0.25, 1.75, runs)]}
        rec = engine_record("scaling", sim, grid, 1, "auto", peak, "1_run", 1.0, width=width,
                            extra={"estimated_memory_mb": round(sweep.footprint(sim).run * runs / 2**20, 2)})
        first = out[0].engine_run_steps_per_s if out else rec.engine_run_steps_per_s
        out.append(dataclasses.replace(rec, baseline_run_steps_per_s=first,
                                       speedup=round(rec.engine_run_steps_per_s / first, 3)))
    return out


def schedule_cost(quick: bool, peak: float) -> list[Record]:
    """What a learning-rate schedule adds to a run-step: the 1-100-1 tanh network on
    chebyshev-3-20 (the cheapest step, so the worst case) under GD, 8 warmup lengths x
    8 seeds with warmup-stable-decay, against the same sweep over 8 constant rates. The
    two sweeps are timed three times each, interleaved (compiled once), and the fastest
    kept; speedup = scheduled / constant rate, goal >= 0.95 (a schedule adds < 5%)."""
    steps = 400 if quick else 2000
    model = models.mlp((1, 100, 1), "tanh")

    def simulation(schedule):
        return simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(lr=0.05, schedule=schedule),
                                   init.scaled(model), steps=steps, every=steps // 10, probes=("loss",))
    wsd = schedules.wsd(decay_start=0.8 * steps, decay_steps=0.2 * steps, final_lr_fraction=0.1)
    sweeps = {"constant": (simulation(None), {"lr": [0.01 * (i + 1) for i in range(8)]}),
              "wsd": (simulation(wsd), {"warmup_steps": [float(w) for w in np.linspace(0, 0.2 * steps, 8)]})}
    plans = {name: [] for name in sweeps}
    for _ in range(3):  # interleaved, so neither pays for going first
        for name, (sim, grid) in sweeps.items():
            plans[name].append(sweep.config_of(sweep.sweep(sim, grid=grid, seeds=8, progress=False))["plans"][0])
    base, rate = (max(64 * steps / p["seconds"]["run"] for p in plans[name]) for name in sweeps)
    plan = plans["wsd"][0]
    return [measured("schedule_cost", 64, steps, "auto", picked(plan), rate, "constant_lr_sweep", base, peak,
                     plan["seconds"]["compile"], layers="1-100-1", memory_mb=plan_memory_mb(plan),
                     goal=Goal("speedup", ">=", 0.95))]


def cadence_cost(quick: bool, peak: float) -> list[Record]:
    """What the sharpness costs at its own cadence: the digits MLP under GD, the loss
    every 10 steps, against the same sweep with `probes.every(50, sharpness)` added,
    with three solves: the default (Lanczos 20 cold / 10 warm products, then on to
    residual 1e-3), and two that stop as soon as the residual is below 1e-3 or 3e-3
    (from 2 products, at most 20). Timed three times each (once with --quick),
    interleaved, the fastest kept; probe_cost = bare / probed rate, goal <= 1.3 (the issue's target for this
    mix). A record's `hvps_per_measurement` and `hvp_floor` = 1 + products x the HVP's
    cost in gradients (~2.5, `hvp_cost`) / 50 say what the HVPs alone cost: a skipped
    record costs nothing, so probe_cost ~ hvp_floor. What a looser solve gives up is
    measured beside it: `eigenvalue_error_median` / `_max`, the relative error of each
    measurement against a solve of 80 products (no early stop) on the same runs."""
    steps, seeds = (100, 1) if quick else (500, 2)
    model = models.mlp((64, 200, 200, 10), "tanh")
    grid = {"lr": [0.02, 0.05] if quick else [0.01, 0.02, 0.04, 0.08]}
    make = lambda probe_list: simulate.simulation(model, data.digits(), "mse", optim.gd(), init.scaled(model),
                                                  steps=steps, every=10, probes=probe_list)
    early = lambda tol: probes.sharpness(iters=2, warm_iters=2, max_iters=20, max_warm_iters=20, tol=tol)
    sims = {"bare": make(("loss",)), "sharpness_every_50": make(("loss", probes.every(50, "sharpness"))),
            "sharpness_tol1e-3_every_50": make(("loss", probes.every(50, early(1e-3)))),
            "sharpness_tol3e-3_every_50": make(("loss", probes.every(50, early(3e-3))))}
    if quick:  # CI proves the path runs: one probed variant (each costs a compile of ~15 s)
        sims = {name: sims[name] for name in ("bare", "sharpness_tol3e-3_every_50")}
    plans, sets = {name: [] for name in sims}, {}
    for _ in range(1 if quick else 3):  # interleaved, so none pays for going first
        for name, sim in sims.items():
            sets[name] = sweep.sweep(sim, grid=grid, seeds=seeds, progress=False)
            plans[name].append(sweep.config_of(sets[name])["plans"][0])
    reference = sweep.sweep(make(("loss", probes.every(50, probes.sharpness(iters=80, warm_iters=80, tol=None)))),
                            grid=grid, seeds=seeds, progress=False).sharpness.values
    measured_at = np.isfinite(reference)
    runs = seeds * len(grid["lr"])
    rate = {name: max(runs * steps / p["seconds"]["run"] for p in plans[name]) for name in sims}
    out = []
    for name in list(sims)[1:]:
        plan, ds = plans[name][0], sets[name]
        products = float(ds.eigen_products.mean())  # over the measurements (NaN records between are skipped)
        error = np.abs(ds.sharpness.values[measured_at] / reference[measured_at] - 1)
        rec = measured("cadence_cost", runs, steps, "auto", picked(plan), rate[name], "bare_sweep", rate["bare"], peak,
                       plan["seconds"]["compile"], memory_mb=plan_memory_mb(plan), every=10, probe=name,
                       flops_per_step=train_flops_per_step(sims[name]), goal=Goal("probe_cost", "<=", 1.3),
                       extra={"hvps_per_measurement": round(products, 2),
                              "hvp_floor": round(1 + products * 2.5 / 50, 3),
                              "eigenvalue_error_median": float(f"{np.median(error):.2e}"),
                              "eigenvalue_error_max": float(f"{error.max():.2e}")}, **DIGITS)
        out.append(dataclasses.replace(rec, probe_cost=round(rate["bare"] / rate[name], 3)))
    return out


def grokking_sweep(quick: bool, peak: float) -> list[Record]:
    """A 64-run grokking sweep, weight decay (4) x training fraction (2, traced: one
    program) x seeds (8), on one-hot (a + b) mod p (an MLP 2p-128-128-p) and on the
    tokens (a, b, =) (a one-layer transformer, d_model 32, 4 heads, no LayerNorm),
    full-batch AdamW, against the best per-run program (`per_run_scan`: one
    jit-compiled scan per run, optax.adamw on the static split at fraction 0.5). A
    traced split trains on all N pairs with the test pairs weighted 0, so each engine
    step does 1/f of the baseline's arithmetic (2x here, for the mean of 0.3 and 0.5):
    `speedup` says what one program over fractions costs against per-fraction programs
    on this device. On CPU the engine runs the runs one after another (auto -> map);
    on an accelerator the vmapped batch is where it pays."""
    p, steps = (23, 40) if quick else (31, 300)
    grid = {"weight_decay": [0.1, 0.3, 1.0, 3.0], "train_fraction": [0.3, 0.5]}
    opt = optim.adamw(lr=1e-3, b1=0.9, b2=0.98)
    nets = {"mlp": (models.mlp((2 * p, 128, 128, p), "relu"), "one_hot"),
            "transformer": (models.transformer(vocab=p + 1, seq_len=3, out_dim=p, d_model=32, heads=4, mlp_ratio=4,
                                               layer_norm=False, activation="relu"), "tokens")}
    out = []
    for name, (model, encoding) in nets.items():
        sim = simulate.simulation(model, data.modular_ranked(p, "+", 0, encoding), "cross_entropy", opt,
                                  steps=steps, every=steps // 4, probes=("loss", "accuracy", "test_accuracy"),
                                  train_fraction=0.5)
        static = data.modular(p, "+", 0.5, 0, encoding)
        base = per_run_scan(model, init.scaled(model), static, optax.adamw(1e-3, 0.9, 0.98, weight_decay=1.0),
                            {"init_scale": 1.0}, steps, 8, loss_fn=losses.cross_entropy)
        flops = None if name == "mlp" else xla_gradient_flops(model, sim.data.x, sim.data.y, losses.cross_entropy)
        out.append(engine_record("grokking_sweep", sim, grid, 8, "auto", peak, "scan", base, network=f"{name}_p{p}",
                                 flops_per_step=flops))
    return out


def central_flow_sweep(quick: bool, peak: float) -> list[Record]:
    """The central flow for a sweep of runs (`engine.flows`): the reference's small
    setting (swish MLP 8-16-16-1, 128 Gaussian points, squared error), seeds x 2 step
    sizes, each run advancing GD, its stable flow (16 substeps) and its central flow
    (4 substeps, k = 4, 50 SDCP iterations) and recording every step; against the same
    sweep of discrete GD runs alone with the sharpness every step (Lanczos 20 cold / 10
    warm). `speedup` < 1: what the central flow costs per GD step over a sharpness-probed
    run."""
    from engine import flows

    def squared_error(y_pred, y):  # as experiments.central_flows: the reference's loss, no 1/2
        return jnp.mean(jnp.sum(jnp.square(y_pred - y), axis=-1))
    steps, seeds = (20, 1) if quick else (200, 4)
    model = models.mlp((8, 16, 16, 1), "silu")
    kx, ky = jax.random.split(jax.random.key(0))
    d = data.Dataset(jax.random.normal(kx, (128, 8)), jax.random.normal(ky, (128, 1)))
    grid = {"lr": [0.1, 0.15]}
    runs = seeds * len(grid["lr"])
    flow = flows.flow_simulation(model, d, squared_error, steps=steps, every=1, k=4, substeps=4, solver_iters=50)
    gd = simulate.simulation(model, d, squared_error, optim.gd(), init.scaled(model), steps=steps, every=1,
                             probes=("loss", probes.sharpness(iters=20, warm_iters=10)))
    rates = {}
    for tag, sim in (("central_flow", flow), ("gd_sharpness", gd)):
        ds = sweep.sweep(sim, grid=grid, seeds=seeds, progress=False)
        plan = sweep.config_of(ds)["plans"][0]
        rates[tag] = (runs * steps / plan["seconds"]["run"], plan)
    rate, plan = rates["central_flow"]
    return [measured("central_flow", runs, steps, None, picked(plan), rate, "gd_sharpness_sweep",
                     rates["gd_sharpness"][0], peak, plan["seconds"]["compile"], train_flops_per_step(flow),
                     memory_mb=plan_memory_mb(plan), network="mlp_8-16-16-1_silu_gaussian", layers="8-16-16-1",
                     probe="central_flow", every=1)]


WORKLOADS = {"phase_sweep": phase_sweep, "digits_mlp": digits_mlp, "batching": batching,
             "hvp_cost": hvp_cost, "sharpness_overhead": sharpness_overhead,
             "adam_curvature": adam_curvature, "scaling": scaling, "schedule_cost": schedule_cost,
             "cadence_cost": cadence_cost, "grokking_sweep": grokking_sweep,
             "central_flow_sweep": central_flow_sweep}
