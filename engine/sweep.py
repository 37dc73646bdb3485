"""The grid: seeds x hyperparameters as ONE compiled, vectorized program.

    ds = sweep(sim, grid={"lr": [0.01, 0.1]}, seeds=8)                 # traced axes
    ds = sweep(build, grid={"gamma": [...]}, static={"width": [100, 1000]}, seeds=8)

Traced axes (`grid`: hyperparameter name -> values, Cartesian product) and seeds are
flattened to one run axis r = seed_index * n_grid + grid_index, which is

- batched with `jax.vmap` ("vmap": one wide program; what accelerators want) or
  `lax.map` over groups of `map_batch` vmapped runs ("map": on CPU, groups small
  enough to stay in cache; one run at a time for runs that fill the machine alone);
  "auto" picks per workload (`choose_strategy`);
- chunked: at most `chunk` runs are in memory at once (picked from a memory estimate
  unless given); the last chunk is padded with copies, which are dropped;
- sharded over the local devices (`jax.shard_map` on a 1-D mesh named "runs");
- advanced in segments of record intervals, one progress-bar tick per segment;
- checkpointed after every segment when given `checkpoint=DIR` (or run inside
  `engine.checkpoint.checkpointing(DIR)`): a killed sweep rerun with the same arguments
  resumes from its last segment and returns the same results bit for bit.

Static axes (`static`: name -> values, e.g. width, depth, activation) change shapes, so
`build(**values) -> Simulation` is called and compiled once per combination and the
results are joined on their coordinates.

Run r with seed s uses the key `fold_in(key(base_seed), s)`: seed s is the same run
whatever else is in the sweep. Measured on CPU (tests/test_sweep.py): its trajectory
(parameters, loss, flags) is the same bit for bit alone, in a batch of 64, in any
chunk, vmapped or mapped, on 1 or 8 devices, resumed or not; a quantity *measured*
from it (a norm ratio, a Lanczos eigenvalue) is the same bit for bit across chunk
sizes and resumption, and otherwise may round differently by ~1 float32 ulp (rel
~1e-7), because XLA compiles it into a different program (batched vs not, partitioned
over devices vs not) and fuses its reductions differently. On GPUs, batched kernels
may also reassociate the trajectory's own sums.

Returns an `xarray.Dataset`: probes with dims (seed, *static, *grid, step, ...),
flags `diverged`, `diverged_step`, `converged`, `converged_step` with dims
(seed, *static, *grid), and the whole configuration as JSON in `attrs["config"]`.
"""
from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from engine import checkpoint as checkpoint_module
from engine.errors import ConfigError, require
from engine.simulate import FLAGS, Simulation

STRATEGIES = ("auto", "vmap", "map")


# ----------------------------------------------------------------------------- validation
def _check_values(field, values):
    require(isinstance(values, (list, tuple, np.ndarray)), field,
            f"got {type(values).__name__} {values!r}", "give a list of values, e.g. [0.1, 0.2]")
    require(len(values) >= 1, field, "the list of values is empty", "give at least one value")
    require(len(set(map(repr, values))) == len(values), field, f"repeated values in {list(values)}",
            "list each value once")
    return list(values)


def seed_values(seeds) -> list[int]:
    """`seeds` as a list of distinct non-negative ints (an int n means 0..n-1)."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        require(seeds >= 1, "seeds", f"got {seeds}", "use a number of seeds >= 1")
        return list(range(int(seeds)))
    seeds = _check_values("seeds", seeds)
    for s in seeds:
        require(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0, "seeds",
                f"got {s!r}", "use non-negative integers")
    return [int(s) for s in seeds]


def _check_grid(grid: dict) -> dict:
    require(isinstance(grid, dict), "grid", f"got {type(grid).__name__}",
            "give a dict of hyperparameter name -> list of values")
    out = {}
    for name, values in grid.items():
        values = _check_values(f"grid[{name!r}]", values)
        for v in values:
            ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            require(ok and math.isfinite(float(v)), f"grid[{name!r}]", f"got {v!r}",
                    "traced hyperparameters are finite numbers; put shapes and names in static=")
        out[name] = [float(v) for v in values]
    return out


def _builder(simulation, static: dict) -> Callable[..., Simulation]:
    if not static:
        require(isinstance(simulation, Simulation), "simulation", f"got {type(simulation).__name__}",
                "pass engine.simulate.simulation(...), or a builder function with static=")
        return lambda: simulation
    require(callable(simulation) and not isinstance(simulation, Simulation), "static",
            "static axes need a builder function, got a fixed Simulation",
            "pass build(**static_values) -> Simulation as the first argument")
    params = inspect.signature(simulation).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name in static:
        require(takes_kwargs or name in params, f"static[{name!r}]",
                f"the builder {getattr(simulation, '__name__', 'build')} has no argument {name!r}",
                f"use one of {', '.join(params)}")
    return simulation


# ----------------------------------------------------------------------------- memory
def _nbytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "dtype") and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)))


def bytes_per_run(sim: Simulation) -> int:
    """A conservative estimate of one run's memory while it trains: its state (params,
    theta_0, optimizer and probe states) several times over for gradients and updates,
    its records, and the activations of a forward-backward pass over the data."""
    state, rec = jax.eval_shape(lambda: sim.init(jax.random.key(0), {}, sim.data))
    width_sum = sum(fo for _, fo in sim.config.get("layer_shapes", ())) or 1
    activations = 3 * 4 * sim.data.n * max(width_sum, int(np.prod(sim.data.x.shape[1:])))
    return 4 * _nbytes(state) + _nbytes(rec) * len(sim.record_steps) + activations


def memory_budget_bytes(devices) -> int:
    """Half the accelerator memory, or a quarter of the host memory on CPU."""
    stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


# ----------------------------------------------------------------------------- batching
CACHE_BUDGET_BYTES = 256 * 1024


def working_set_bytes(sim: Simulation) -> int:
    """Bytes one training step of one run touches: parameters and their gradient,
    update and optimizer moments (~8 copies), and the activations of a forward-backward
    pass over the training data (~8 per unit)."""
    units = sum(fo for _, fo in sim.config.get("layer_shapes", ())) or int(np.prod(sim.data.x.shape[1:]))
    return 4 * 8 * (sim.config["n_params"] + sim.data.n * units)


def choose_strategy(sim: Simulation, platform: str, chunk: int) -> tuple[str, int | None]:
    """(strategy, map_batch) for a chunk of runs.

    On an accelerator: vmap the whole chunk. On CPU: `lax.map` over groups of b runs,
    b the largest power of two whose working set fits `CACHE_BUDGET_BYTES`, so that a
    group's parameters and activations stay in cache across its steps; one wide vmap
    streams every run through memory each step. On 2 cores (the `batching_w*` records
    of benchmarks/results/) the pick is within the ~20% run-to-run noise of the best
    choice at widths 30 to 4000 and up to 3x faster than one wide vmap. A run that fills
    the cores alone (the digits MLP) gets b = 1: one run at a time, each a plain scan.
    """
    if platform != "cpu":
        return "vmap", None
    fit = max(1, CACHE_BUDGET_BYTES // working_set_bytes(sim))
    b = 2 ** int(math.log2(fit))
    if b >= chunk:
        return "vmap", None
    return "map", (None if b == 1 else b)


def _batched(f, strategy, map_batch):
    """f(per_run, per_run, shared) -> f over a leading run axis of the first two args."""
    if strategy == "vmap":
        return jax.vmap(f, in_axes=(0, 0, None))
    return lambda a, b, shared: jax.lax.map(lambda ab: f(ab[0], ab[1], shared), (a, b),
                                            batch_size=map_batch)


def _sharded(f, devices):
    if len(devices) == 1:
        return f
    from jax.sharding import Mesh, PartitionSpec as P
    mesh = Mesh(np.array(devices), ("runs",))
    # Runs never talk to each other (no collectives), so the varying-axes check, which
    # trips over loop carries built from replicated constants (Lanczos), is off.
    return jax.shard_map(f, mesh=mesh, in_specs=(P("runs"), P("runs"), P()), out_specs=P("runs"),
                         check_vma=False)


def _segment_length(intervals: int, segment: int | None) -> int:
    if segment is not None:
        require(isinstance(segment, int) and 1 <= segment, "segment", f"got {segment!r}",
                "use a number of record intervals >= 1")
        require(intervals % segment == 0, "segment",
                f"{segment} does not divide the {intervals} record intervals",
                f"use a divisor of {intervals}")
        return segment
    target = max(1, intervals // 10)
    return max(d for d in range(1, target + 1) if intervals % d == 0)


# ----------------------------------------------------------------------------- the sweep
def sweep(simulation, grid: dict | None = None, seeds=1, static: dict | None = None, *,
          chunk: int | None = None, memory_budget_mb: float | None = None,
          strategy: str = "auto", map_batch: int | None = None, segment: int | None = None,
          devices=None, base_seed: int = 0, progress: bool | None = None, checkpoint=None) -> xr.Dataset:
    """Run every (seed x grid) combination; see the module docstring.

    simulation: a `Simulation`, or with `static` a builder `build(**static) -> Simulation`;
    grid: {hyperparameter: [values]} of traced axes; seeds: int or list of ints;
    static: {name: [values]} of axes that change shapes; chunk: runs in memory at once;
    memory_budget_mb: the budget `chunk` is chosen for; strategy: "auto", "vmap" or
    "map" (`map_batch` runs at a time); segment: record intervals per compiled call;
    devices: the devices the run axis is sharded over (default all local ones);
    checkpoint: a folder to checkpoint into and resume from (`engine.checkpoint`).
    """
    grid = _check_grid({} if grid is None else grid)
    static = {} if static is None else static
    require(isinstance(static, dict), "static", f"got {type(static).__name__}",
            "give a dict of name -> list of values")
    static = {k: _check_values(f"static[{k!r}]", v) for k, v in static.items()}
    both = set(grid) & set(static)
    require(not both, "grid", f"{sorted(both)} appear in both grid and static",
            "put each axis in one of them")
    seeds = seed_values(seeds)
    require(strategy in STRATEGIES, "strategy", f"unknown value {strategy!r}",
            f"use one of {', '.join(STRATEGIES)}")
    if map_batch is not None:
        require(isinstance(map_batch, int) and map_batch >= 1, "map_batch", f"got {map_batch!r}",
                "use an integer >= 1")
    if chunk is not None:
        require(isinstance(chunk, int) and chunk >= 1, "chunk", f"got {chunk!r}", "use an integer >= 1")
    devices = list(jax.local_devices() if devices is None else devices)
    require(len(devices) >= 1, "devices", "no devices given", "omit devices= to use all local ones")
    build = _builder(simulation, static)
    combos = [dict(zip(static, vals)) for vals in itertools.product(*static.values())]
    sims = [build(**c) for c in combos]  # builds shapes only: no compilation yet
    for c, sim in zip(combos, sims):
        require(isinstance(sim, Simulation), "simulation",
                f"the builder returned {type(sim).__name__} for {c}", "return engine.simulate.simulation(...)")
        for name, values in grid.items():
            for v in values:
                sim.check_hparams({name: v})
    budget = (memory_budget_bytes(devices) if memory_budget_mb is None
              else int(memory_budget_mb * 2**20))
    plans = [_plan(sim, len(seeds) * _size(grid), chunk, budget, devices, strategy, map_batch, segment)
             for sim in sims]

    ckpt = Path(checkpoint) if checkpoint is not None else checkpoint_module.next_directory()
    if ckpt is not None:
        keys = ("chunk", "n_chunks", "segment", "n_segments", "strategy", "map_batch")
        checkpoint_module.claim(ckpt, checkpoint_module.fingerprint({
            "sims": [s.config for s in sims], "static": [repr(c) for c in combos], "grid": grid, "seeds": seeds,
            "base_seed": base_seed, "plans": [{k: p[k] for k in keys} for p in plans], "devices": len(devices),
            "x64": bool(jax.config.jax_enable_x64)}))

    show = sys.stderr.isatty() if progress is None else progress
    total = sum(p["n_chunks"] * p["n_segments"] for p in plans)
    from tqdm.auto import tqdm
    bar = tqdm(total=total, disable=not show, desc="sweep", unit="segment")
    parts = []
    for i, (c, sim, plan) in enumerate(zip(combos, sims, plans)):
        part = None if ckpt is None else ckpt / f"part-{i}"
        records, flags = _run_all(sim, grid, seeds, base_seed, plan, devices, bar, part)
        ds = _dataset(sim, grid, seeds, records, flags)
        parts.append(ds.expand_dims({k: [v] for k, v in c.items()}) if c else ds)
    bar.close()
    ds = parts[0] if len(parts) == 1 else xr.combine_by_coords(parts, join="outer",
                                                                combine_attrs="drop_conflicts")
    order = ["seed", *static, *grid, "step"]
    ds = ds.transpose(*order, ...)
    ds.attrs.update(_attrs(sims[0], grid, seeds, static, plans, devices, base_seed))
    return ds


def _size(grid):
    return int(np.prod([len(v) for v in grid.values()])) if grid else 1


def _plan(sim, n_runs, chunk, budget, devices, strategy, map_batch, segment):
    per_run = bytes_per_run(sim)
    n_dev = len(devices)
    fits = budget // per_run
    if fits < 1:
        raise ConfigError("memory_budget_mb", f"one run needs about {per_run / 2**20:.1f} MiB, "
                          f"more than the budget of {budget / 2**20:.1f} MiB",
                          "raise memory_budget_mb, or shrink the model, data or records")
    if chunk is None:
        chunk = min(n_runs, int(fits) * n_dev)
    chunk = max(n_dev, math.ceil(chunk / n_dev) * n_dev)
    if strategy == "auto":
        strategy, map_batch = choose_strategy(sim, devices[0].platform, chunk // n_dev)
    if strategy == "vmap" and chunk // n_dev == 1 and devices[0].platform == "cpu":
        # One run per device: XLA's CPU backend runs a batch of one ~10x slower than the
        # unbatched program (measured: width 4000, 298 us against 22 us per step).
        strategy, map_batch = "map", None
    k = _segment_length(sim.intervals, segment)
    return {"chunk": chunk, "n_chunks": math.ceil(n_runs / chunk), "strategy": strategy,
            "map_batch": map_batch if strategy == "map" else None, "segment": k,
            "n_segments": sim.intervals // k, "bytes_per_run": per_run}


def _run_table(grid, seeds, base_seed):
    """Keys and hyperparameter arrays [n_runs], seed-major."""
    combos = list(itertools.product(*grid.values())) or [()]
    seed_idx = np.repeat(np.asarray(seeds), len(combos))
    hp = {name: np.tile(np.asarray([c[i] for c in combos]), len(seeds))
          for i, name in enumerate(grid)}
    base = jax.random.key(base_seed)
    keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.asarray(seed_idx, jnp.uint32))
    return keys, hp, len(seed_idx)


def _footprint_mb(compiled) -> float | None:
    """XLA's buffer assignment for one compiled segment on one device: arguments +
    outputs + temporaries, less what outputs reuse of the arguments (MiB)."""
    try:
        m = compiled.memory_analysis()
        used = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        return round(used / 2**20, 3)
    except Exception:  # backends without the analysis
        return None


def _run_all(sim, grid, seeds, base_seed, plan, devices, bar, ckpt: Path | None = None):
    """Every chunk of runs, segment by segment. Compiles once (ahead of time, so the
    compile and run times can be reported in `plan["seconds"]`). With `ckpt`, each
    segment's records and the state after it are saved there, and what is saved is
    picked up again (`engine.checkpoint`)."""
    keys, hp, n_runs = _run_table(grid, seeds, base_seed)
    dtype = jnp.result_type(float)
    chunk, k = plan["chunk"], plan["segment"]
    strategy, map_batch = plan["strategy"], plan["map_batch"]
    init = jax.jit(_sharded(_batched(sim.init, strategy, map_batch), devices))
    advance = jax.jit(_sharded(_batched(lambda s, h, d: sim.advance(s, h, d, k),
                                        strategy, map_batch), devices))
    records, flags, compiled, init_c = [], [], None, None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    t_compile, t0 = 0.0, time.perf_counter()
    for ci, start in enumerate(range(0, n_runs, chunk)):
        files = _chunk_files(ckpt, ci)
        if files and files["done"].exists():
            saved = checkpoint_module.load_arrays(files["done"])
            records.append({n[4:]: v for n, v in saved.items() if n.startswith("rec_")})
            flags.append({f: saved[f"flag_{f}"] for f in FLAGS})
            bar.update(plan["n_segments"])
            continue
        idx = np.minimum(np.arange(start, start + chunk), n_runs - 1)  # pad with copies
        keep = min(chunk, n_runs - start)
        hp_c = {name: jnp.asarray(v[idx], dtype) for name, v in hp.items()}
        if init_c is None:
            tc = time.perf_counter()
            init_c = init.lower(keys[idx], hp_c, sim.data).compile()
            t_compile += time.perf_counter() - tc
        state, rec0 = init_c(keys[idx], hp_c, sim.data)
        if compiled is None:
            tc = time.perf_counter()
            compiled = advance.lower(state, hp_c, sim.data).compile()
            t_compile += time.perf_counter() - tc
            plan["compiled_memory_mb"] = _footprint_mb(compiled)
        segs, first = [jax.tree.map(lambda x: np.asarray(x)[:keep, None], rec0)], 0
        if files and files["state"].exists():
            state, extra = checkpoint_module.load_state(files["state"], state)
            first = int(extra["segment"])
            segs += [checkpoint_module.load_arrays(files["seg"](j)) for j in range(first)]
            bar.update(first)
        for j in range(first, plan["n_segments"]):
            state, rec = compiled(state, hp_c, sim.data)
            segs.append(jax.tree.map(lambda x: np.asarray(x)[:keep], rec))
            if files:  # the segment's records first: a state file always has all of its
                checkpoint_module.save_arrays(files["seg"](j), segs[-1])
                checkpoint_module.save_state(files["state"], state, {"segment": np.int64(j + 1)})
            bar.update(1)
        records.append({name: np.concatenate([s[name] for s in segs], axis=1) for name in rec0})
        flags.append({f: np.asarray(getattr(state, f))[:keep] for f in FLAGS})
        if files:
            checkpoint_module.save_arrays(files["done"], {**{f"rec_{n}": v for n, v in records[-1].items()},
                                                          **{f"flag_{f}": v for f, v in flags[-1].items()}})
            for j in range(plan["n_segments"]):
                files["seg"](j).unlink(missing_ok=True)
            files["state"].unlink(missing_ok=True)
    plan["seconds"] = {"compile": round(t_compile, 4),
                       "run": round(time.perf_counter() - t0 - t_compile, 4)}
    join = lambda parts: {n: np.concatenate([p[n] for p in parts], axis=0) for n in parts[0]}
    return join(records), join(flags)


def _chunk_files(ckpt: Path | None, ci: int) -> dict | None:
    if ckpt is None:
        return None
    return {"done": ckpt / f"chunk-{ci}.done.npz", "state": ckpt / f"chunk-{ci}.state.npz",
            "seg": lambda j: ckpt / f"chunk-{ci}.seg-{j}.npz"}


def _dataset(sim, grid, seeds, records, flags) -> xr.Dataset:
    shape = (len(seeds), *[len(v) for v in grid.values()])
    dims = ("seed", *grid)
    coords = {"seed": seeds, **grid, "step": sim.record_steps}
    data_vars = {}
    for p in sim.probes:
        for name, extra in p.outputs.items():
            arr = records[name]
            data_vars[name] = ((*dims, "step", *extra), arr.reshape(*shape, *arr.shape[1:]))
            for i, d in enumerate(extra):
                if d in sim.probe_coords and len(sim.probe_coords[d]) == arr.shape[2 + i]:
                    coords[d] = sim.probe_coords[d]
    for f in FLAGS:
        data_vars[f] = (dims, flags[f].reshape(shape))
    return xr.Dataset(data_vars, coords=coords)


def _attrs(sim, grid, seeds, static, plans, devices, base_seed) -> dict:
    import importlib.metadata as md
    versions = {}
    for pkg in ("jax", "jaxlib", "optax", "flax", "numpy", "xarray"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    config = {**sim.config, "grid": grid, "seeds": seeds,
              "static": {k: [v if isinstance(v, (int, float, str)) else repr(v) for v in vals]
                         for k, vals in static.items()},
              "base_seed": base_seed, "plans": plans}
    return {"config": json.dumps(config, default=str), "versions": json.dumps(versions),
            "device": f"{devices[0].platform}:{devices[0].device_kind} x{len(devices)}",
            "x64": int(jax.config.jax_enable_x64)}


# ----------------------------------------------------------------------------- files
def save(ds: xr.Dataset, path) -> None:
    """Write `ds` as netCDF atomically (`engine.checkpoint.replacing`): a crash leaves
    the previous file or none, never a half-written one that looks complete."""
    with checkpoint_module.replacing(path) as tmp:
        ds.to_netcdf(tmp)


def load(path) -> xr.Dataset:
    """Read a saved sweep back into memory."""
    with xr.open_dataset(os.fspath(path)) as ds:
        return ds.load()


def config_of(ds: xr.Dataset) -> dict:
    """The configuration a sweep recorded in its attrs."""
    return json.loads(ds.attrs["config"])
