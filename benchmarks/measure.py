"""How one run becomes a `report.Record`: timing, the device, its memory, the flops of
a dense network, the machine's GEMM peak, and what a sweep's plan says it ran.

`engine_record` runs a sweep and measures it; `measured` builds the record from rates
measured any other way (the HVP loops, the probed sweeps).
"""
from __future__ import annotations

import resource
import time

import jax
import numpy as np

from benchmarks.report import Record
from engine import simulate, sweep


def timed(fn) -> float:
    """Seconds one call of `fn()` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def gemm_peak_gflops(n: int) -> float:
    """float32 n x n matrix product, best of 5, in this process."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a, b: a @ b)
    f(a, a).block_until_ready()
    best = min(timed(lambda: f(a, a).block_until_ready()) for _ in range(5))
    return 2 * n**3 / best / 1e9


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{d.device_kind} x{jax.device_count()}"


def peak_memory_mb() -> float:
    d = jax.devices()[0]
    stats = d.memory_stats() if d.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train_flops_per_step(sim: simulate.Simulation) -> float:
    """Forward + backward of a dense network: ~ 6 n sum(fan_in fan_out) flops."""
    return 6.0 * sim.data.n * sum(a * b for a, b in sim.config["layer_shapes"])


def xla_gradient_flops(model, x, y, loss_fn) -> float:
    """XLA's flop count of one full-batch gradient of `loss_fn(model.apply(params, x), y)`:
    the training step's arithmetic for a network the dense formula cannot count (a
    transformer's attention, a CNN's convolutions)."""
    params = model.init(jax.random.key(0))
    grad = jax.jit(jax.grad(lambda p: loss_fn(model.apply(p, x), y)))
    c = grad.lower(params).compile().cost_analysis()
    return float((c[0] if isinstance(c, list) else c)["flops"])


def measured(workload, runs, steps, requested, picked, rate, baseline, base_rate, peak, compile_s,
             flops_per_step=0.0, memory_mb=None, **fields) -> Record:
    """One result. peak_memory_mb: XLA's buffer assignment of the sweep's compiled
    segment, summed over devices, when given (`memory_mb`); otherwise the device's
    peak bytes in use, or on CPU the process's high-water RSS (`process_peak_rss_mb`,
    always recorded, which counts everything this process ran before)."""
    gflops = flops_per_step * rate / 1e9
    rss = peak_memory_mb()
    return Record(workload, runs, steps, requested=requested, picked=picked, engine_run_steps_per_s=round(rate, 2),
                  baseline=baseline, baseline_run_steps_per_s=round(base_rate, 2),
                  speedup=round(rate / base_rate, 3), gflops=round(gflops, 3), gemm_peak_gflops=round(peak, 2),
                  peak_fraction=round(gflops / peak, 4), compile_s=round(compile_s, 3),
                  peak_memory_mb=round(rss if memory_mb is None else memory_mb, 2),
                  process_peak_rss_mb=round(rss, 1), device=device_name(), devices=jax.device_count(), **fields)


def plan_memory_mb(plan) -> float | None:
    """The sweep's compiled footprint over all devices it ran on (MiB)."""
    per_device = plan.get("compiled_memory_mb")
    return None if per_device is None else per_device * jax.device_count()


def picked(plan) -> str:
    """What a sweep ran: "vmap" or "map(batch=b)"."""
    return f"map(batch={plan['map_batch'] or 1})" if plan["strategy"] == "map" else "vmap"


def hvps_per_warm_probe(ds) -> float | None:
    """Hessian-vector products per record step after the first, over all curvature
    probes of a sweep: the eigen-solves' counted products plus one per directional
    curvature (mean over runs and steps)."""
    solves = [v for v in ds.data_vars if v.endswith("eigen_products")]
    directional = [v for v in ds.data_vars if v.endswith("directional_curvature")]
    if not solves and not directional:
        return None
    return round(sum(float(ds[v].isel(step=slice(1, None)).mean()) for v in solves) + len(directional), 2)


def engine_record(workload, sim, grid, seeds, strategy, peak, baseline, baseline_rate, map_batch=None,
                  flops_per_step=None, **fields) -> Record:
    """Run the sweep and compare its run-steps/s with `baseline_rate`; flops_per_step:
    a training step's flops, when the dense formula (`train_flops_per_step`) does not
    apply."""
    ds = sweep.sweep(sim, grid=grid, seeds=seeds, strategy=strategy, map_batch=map_batch, progress=False)
    plan = sweep.config_of(ds)["plans"][0]
    runs = ds.sizes["seed"] * int(np.prod([len(v) for v in grid.values()]))
    return measured(workload, runs, sim.steps, strategy, picked(plan), runs * sim.steps / plan["seconds"]["run"],
                    baseline, baseline_rate, peak, plan["seconds"]["compile"],
                    train_flops_per_step(sim) if flops_per_step is None else flops_per_step,
                    memory_mb=plan_memory_mb(plan), hvps_per_warm_probe=hvps_per_warm_probe(ds), **fields)
