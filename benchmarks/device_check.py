"""The accelerator check: one command, a few minutes, on whatever device JAX sees.

    python -m benchmarks --device-check [--dry-run] [--json FILE]

writes `benchmarks/results/<device_kind>.json` (or FILE) and prints it. It measures, in
one process:

- the device, its memory, and the matrix-product precision in force: the relative
  error of a float32 product at JAX's default precision and at "highest" against
  float64 (TF32 shows as ~1e-3, full float32 as ~1e-6; H100/H200 default to TF32);
- peaks: float32 matrix product GFLOP/s at both precisions, and memory bandwidth
  (a large axpy, bytes read + written per second);
- the cost of one Hessian-vector product over one gradient (lone HVP loops, as
  `benchmarks.workloads.hvp_cost`) on the tiny and the digits networks;
- three sweeps, each one compiled program: the phase sweep (two-layer ReLU, width
  4000, Luo's points), the tiny edge-of-stability sweep (1-100-1 tanh on
  chebyshev-3-20, sharpness every 10 steps; 10^4 runs) against the per-run eigsh
  loop, and the digits sweep (64-200-200-10 tanh, 1024 runs). For each: run-steps/s,
  compile seconds, the chunking the memory estimate chose (`chunk`, `n_chunks`,
  the estimate per chunk) against XLA's compiled footprint and the device's memory,
  and the roofline: flops and bytes per run-step from XLA's cost analysis of one
  vmapped training step (plus its share of HVPs for the probed sweep, from the
  products the solver recorded), the bound (min of FLOP peak / flops and bandwidth /
  bytes) and the fraction of it reached.

Goals (one H100/H200-class GPU): the tiny EoS sweep >= 100x the eigsh loop and within
2x of its roofline (fraction >= 0.5). `--dry-run` shrinks every size so that it runs on
a CPU in seconds: the test suite runs it so it cannot rot; its numbers mean nothing.

JSON schema ("schema": "engine.device_check/1"): {schema, dry_run, seconds, device:
{platform, device_kind, count, memory_bytes, jax, jaxlib}, precision:
{jax_default_matmul_precision, default_rel_error, highest_rel_error, tf32_in_force},
peaks: {matmul_gflops_default, matmul_gflops_highest, memory_gb_per_s}, hvp: [{network,
grad_us, hvp_us, hvp_over_grad}], workloads: [{name, network, runs, steps, every,
probes, run_steps_per_s, compile_s, strategy, chunk, n_chunks, estimated_chunk_mb,
compiled_mb, device_memory_mb, fits, flops_per_run_step, bytes_per_run_step, hvps_per_step,
bound, roofline_run_steps_per_s, roofline_fraction, baseline, baseline_run_steps_per_s,
speedup}], goals: [{what, value, op, target, met}]}.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.baselines import eigsh_loop
from benchmarks.measure import timed
from engine import data, init, losses, models, optim, probes, simulate, sweep

RESULTS = Path(__file__).parent / "results"


def sizes(dry_run: bool) -> dict:
    """Runs and steps of each sweep; the dry run's are tiny."""
    if dry_run:
        return dict(phase=(16, 1000, 20), eos=(16, 20), digits=(4, 20), eigsh=(1, 20), hvp_reps=5,
                    matmul=256, axpy_mb=16)
    return dict(phase=(1024, 4000, 500), eos=(10_000, 500), digits=(1024, 200), eigsh=(2, 100), hvp_reps=200,
                matmul=8192, axpy_mb=1024)


def device_info() -> dict:
    d = jax.devices()[0]
    stats = d.memory_stats() if d.platform != "cpu" else None
    return {"platform": d.platform, "device_kind": d.device_kind, "count": jax.device_count(),
            "memory_bytes": (stats or {}).get("bytes_limit"), "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib")}


def matmul_precision(n: int) -> tuple[dict, dict]:
    """(precision, peaks): the float32 product's error and speed at the default and at
    the highest precision."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    exact = a.astype(np.float64) @ a.astype(np.float64)
    errors, gflops = {}, {}
    for name, prec in (("default", None), ("highest", "highest")):
        f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=prec))
        x = jnp.asarray(a)
        got = np.asarray(f(x, x), np.float64)
        errors[name] = float(np.linalg.norm(got - exact) / np.linalg.norm(exact))
        gflops[name] = 2 * n**3 / min(timed(lambda: f(x, x).block_until_ready()) for _ in range(5)) / 1e9
    precision = {"jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
                 "default_rel_error": errors["default"], "highest_rel_error": errors["highest"],
                 "tf32_in_force": bool(errors["default"] > 30 * max(errors["highest"], 1e-8))}
    return precision, {"matmul_gflops_default": round(gflops["default"], 1),
                       "matmul_gflops_highest": round(gflops["highest"], 1)}


def memory_bandwidth(megabytes: int) -> float:
    """GB/s of y = a x + y on float32 vectors of `megabytes` (two reads, one write)."""
    n = megabytes * 2**20 // 4
    x, y = jnp.ones(n), jnp.zeros(n)
    f = jax.jit(lambda x, y: 1.0001 * x + y, donate_argnums=1)
    y = f(x, y).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        y = f(x, y).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 3 * 4 * n / best / 1e9


def hvp_over_grad(model, d, reps: int) -> dict:
    """Lone gradient and lone HVP, each timed as a loop on the device."""
    from benchmarks.workloads import grad_loop, hvp_loop, unit
    params = model.init(jax.random.key(0))
    loss_fn = lambda p: losses.mse(model.apply(p, d.x), d.y)
    descend, lone = jax.jit(grad_loop(loss_fn, reps)), jax.jit(hvp_loop(loss_fn, reps, "forward_over_reverse"))
    v = unit(jax.tree.map(jnp.ones_like, params))
    jax.block_until_ready((descend(params), lone(params, v)))
    t_grad = min(timed(lambda: jax.block_until_ready(descend(params))) for _ in range(3)) / reps
    t_hvp = min(timed(lambda: jax.block_until_ready(lone(params, v))) for _ in range(3)) / reps
    return {"grad_us": round(t_grad * 1e6, 2), "hvp_us": round(t_hvp * 1e6, 2),
            "hvp_over_grad": round(t_hvp / t_grad, 3)}


def step_cost(model, d, runs: int) -> tuple[float, float, float, float]:
    """XLA's (flops, bytes) per run of one vmapped GD step of `model` on the data `d`
    (mean squared error), and of one vmapped HVP, over `runs` runs."""
    loss_fn = lambda p: losses.mse(model.apply(p, d.x), d.y)
    params = jax.vmap(model.init)(jax.random.split(jax.random.key(0), runs))
    step = jax.vmap(lambda p: jax.tree.map(lambda w, g: w - 0.01 * g, p, jax.grad(loss_fn)(p)))
    hvp = jax.vmap(lambda p: jax.jvp(jax.grad(loss_fn), (p,), (p,))[1])
    out = []
    for f in (step, hvp):
        c = jax.jit(f).lower(params).compile().cost_analysis()
        c = c[0] if isinstance(c, list) else c
        out += [c["flops"] / runs, c["bytes accessed"] / runs]
    return tuple(out)


def sweep_record(name, network, model, sim, grid, seeds, peaks, device_mb, baseline=None) -> dict:
    """Run one sweep and describe its speed, its chunking and its roofline."""
    ds = sweep.sweep(sim, grid=grid, seeds=seeds, progress=False, name=name)
    plan = sweep.config_of(ds)["plans"][0]
    runs = ds.sizes["seed"] * int(np.prod([len(v) for v in grid.values()]))
    rate = runs * sim.steps / plan["seconds"]["run"]
    flops, nbytes, hvp_flops, hvp_bytes = step_cost(model, sim.data, min(runs, plan["chunk"], 256))
    products = [v for v in ds.data_vars if v.endswith("eigen_products")]
    hvps = sum(float(ds[v].sum()) for v in products) / runs / sim.steps if products else 0.0
    flops, nbytes = flops + hvps * hvp_flops, nbytes + hvps * hvp_bytes
    by_flops, by_bytes = peaks["flops"] / flops, peaks["bytes"] / nbytes
    bound = min(by_flops, by_bytes)
    rec = {"name": name, "network": network, "runs": runs, "steps": sim.steps, "every": sim.config["every"],
           "probes": list(sim.config["probes"]), "run_steps_per_s": round(rate, 1),
           "compile_s": plan["seconds"]["compile"], "strategy": plan["strategy"], "chunk": plan["chunk"],
           "n_chunks": plan["n_chunks"], "estimated_chunk_mb": round(plan["bytes_per_run"] * plan["chunk"] / 2**20, 2),
           "compiled_mb": plan.get("compiled_memory_mb"), "device_memory_mb": device_mb,
           "fits": None if device_mb is None or plan.get("compiled_memory_mb") is None
           else bool(plan["compiled_memory_mb"] <= device_mb),
           "flops_per_run_step": round(flops, 1), "bytes_per_run_step": round(nbytes, 1),
           "hvps_per_step": round(hvps, 3), "bound": "flops" if by_flops < by_bytes else "memory",
           "roofline_run_steps_per_s": round(bound, 1), "roofline_fraction": round(rate / bound, 4)}
    if baseline is not None:
        rec.update(baseline=baseline[0], baseline_run_steps_per_s=round(baseline[1], 2),
                   speedup=round(rate / baseline[1], 2))
    return rec


def workloads(s: dict, peaks: dict, device_mb) -> list[dict]:
    runs, width, steps = s["phase"]
    model = models.mlp((1, width, 1), "relu", output_bias=False)
    phase = simulate.simulation(model, data.luo_points(), "mse", optim.gd(lr=0.05), init.luo(model),
                                steps=steps, every=max(steps // 10, 1), probes=("loss",))
    out = [sweep_record("phase_sweep", f"two_layer_relu_w{width}_luo", model, phase,
                        {"gamma": [float(g) for g in np.linspace(0.25, 1.75, runs // 8)]}, 8, peaks, device_mb)]

    runs, steps = s["eos"]
    tiny = models.mlp((1, 100, 1), "tanh")
    eos = simulate.simulation(tiny, data.chebyshev(3, 20), "mse", optim.gd(), init.scaled(tiny), steps=steps,
                              every=10, probes=("loss", probes.sharpness(iters=20, warm_iters=10)))
    base_runs, base_steps = s["eigsh"]
    base = eigsh_loop(tiny, init.scaled(tiny), eos.data, 0.1, {"init_scale": 1.0}, base_steps, 10, base_runs)
    out.append(sweep_record("tiny_eos", "mlp_1-100-1_tanh_chebyshev", tiny, eos,
                            {"lr": [float(x) for x in np.linspace(0.05, 0.4, runs // 8)]}, 8, peaks, device_mb,
                            baseline=("eigsh_loop", base)))

    runs, steps = s["digits"]
    mlp = models.mlp((64, 200, 200, 10), "tanh")
    digits = simulate.simulation(mlp, data.digits(), "mse", optim.gd(), init.scaled(mlp), steps=steps,
                                 every=max(steps // 10, 1), probes=("loss",))
    out.append(sweep_record("digits", "mlp_64-200-200-10_tanh_digits", mlp, digits,
                            {"lr": [float(x) for x in np.linspace(0.01, 0.08, max(runs // 4, 1))]}, 4, peaks,
                            device_mb))
    return out


def goals(records: list[dict]) -> list[dict]:
    eos = next(r for r in records if r["name"] == "tiny_eos")
    checks = [("tiny_eos speedup over the eigsh loop", eos["speedup"], ">=", 100.0),
              ("tiny_eos roofline_fraction", eos["roofline_fraction"], ">=", 0.5)]
    return [{"what": w, "value": v, "op": op, "target": t, "met": bool(v >= t)} for w, v, op, t in checks]


def main(dry_run: bool = False, json_path: str | None = None) -> dict:
    t0 = time.perf_counter()
    s = sizes(dry_run)
    info = device_info()
    precision, peaks = matmul_precision(s["matmul"])
    peaks["memory_gb_per_s"] = round(memory_bandwidth(s["axpy_mb"]), 1)
    rates = {"flops": 1e9 * peaks["matmul_gflops_default"], "bytes": 1e9 * peaks["memory_gb_per_s"]}
    tiny, mlp = models.mlp((1, 100, 1), "tanh"), models.mlp((64, 200, 200, 10), "tanh")
    hvp = [{"network": "mlp_1-100-1_tanh_chebyshev", **hvp_over_grad(tiny, data.chebyshev(3, 20), s["hvp_reps"])},
           {"network": "mlp_64-200-200-10_tanh_digits", **hvp_over_grad(mlp, data.digits(), s["hvp_reps"])}]
    device_mb = None if info["memory_bytes"] is None else round(info["memory_bytes"] / 2**20)
    records = workloads(s, rates, device_mb)
    result = {"schema": "engine.device_check/1", "dry_run": dry_run, "device": info, "precision": precision,
              "peaks": peaks, "hvp": hvp, "workloads": records, "goals": goals(records)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    kind = re.sub(r"[^a-z0-9]+", "-", info["device_kind"].lower()).strip("-")
    path = Path(json_path) if json_path else RESULTS / f"{info['platform']}-{kind}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result
