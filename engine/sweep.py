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
- sharded over the devices (`jax.shard_map` on a 1-D mesh named "runs"): the local
  ones, or, after `jax.distributed.initialize()` in every process, the devices of all
  processes (`engine.multihost`: each process feeds and advances its own rows, the
  records are gathered, every process returns the same Dataset; write it from process
  0). Processes given different sweeps are refused by a fingerprint check;
- advanced in segments of record intervals, one progress-bar tick per segment;
- checkpointed after every segment when given `checkpoint=DIR` (into `DIR/<name>`,
  so the sweeps of one experiment share a folder by name; over several processes each
  has its own `DIR/<name>/process-<p>`, and a resume needs all of them): a killed sweep
  rerun with the same arguments resumes from its last segment and returns the same
  results bit for bit;
- compiled once per simulation and shapes: the programs are kept on the `Simulation`,
  so a second identical sweep compiles nothing.

Static axes (`static`: name -> values, e.g. width, depth, activation) change shapes, so
`build(**values) -> Simulation` is called and compiled once per combination and the
results are joined on their coordinates (so static values are numbers or names).
`x64=True` computes the sweep in float64 (`precision`), restoring JAX's setting after.

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

import contextlib
import hashlib
import importlib.metadata
import inspect
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from engine import checkpoint, multihost
from engine.errors import FINITE, ConfigError, require
from engine.simulate import Simulation, final_values

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


def _check_static(static) -> dict:
    """{name: values}, each value able to label a coordinate: all numbers or all names."""
    require(isinstance(static, dict), "static", f"got {type(static).__name__}",
            "give a dict of name -> list of values")
    out = {}
    for name, values in static.items():
        values = _check_values(f"static[{name!r}]", values)
        numbers, names = all(v in FINITE for v in values), all(isinstance(v, str) for v in values)
        require(numbers or names, f"static[{name!r}]", f"got {values!r}: a coordinate holds numbers or names",
                "use finite numbers or strings" + ("; for full batch, batch_size = the number of examples"
                                                   if None in values else ""))
        out[name] = values
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
class Footprint(NamedTuple):
    """Estimated bytes of one run. run: while it trains (its state -- params, optimizer
    and probe states -- four times over for gradients and updates, its records, the
    activations of a forward-backward pass over the data); step: what one training step
    touches (parameters, gradient, update and moments ~8 copies, ~8 per activation)."""
    run: int
    step: int


def _nbytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "dtype") and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)))


def footprint(sim: Simulation) -> Footprint:
    """The memory estimate of one run of `sim` (float32 units), from the shapes of its
    state and records; activations count the data's examples times the larger of the
    summed layer widths and the input's features."""
    state, rec = jax.eval_shape(lambda: sim.init(jax.random.key(0), {}, sim.data))
    widths = sum(fo for _, fo in sim.config.get("layer_shapes", ()))
    activations = 4 * sim.data.n * max(widths, int(np.prod(sim.data.x.shape[1:])))
    return Footprint(run=4 * _nbytes(state) + _nbytes(rec) * len(sim.record_steps) + 3 * activations,
                     step=8 * (4 * sim.config["n_params"] + activations))


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


def choose_strategy(step_bytes: int, platform: str, chunk: int) -> tuple[str, int | None]:
    """(strategy, map_batch) for a chunk of runs.

    On an accelerator: vmap the whole chunk. On CPU: `lax.map` over groups of b runs,
    b the largest power of two whose working set (b * `step_bytes`, one run's
    `Footprint.step`) fits `CACHE_BUDGET_BYTES`, so that a
    group's parameters and activations stay in cache across its steps; one wide vmap
    streams every run through memory each step. On 2 cores (the `batching_w*` records
    of benchmarks/results/) the pick is within the ~20% run-to-run noise of the best
    choice at widths 30 to 4000 and up to 3x faster than one wide vmap. A run that fills
    the cores alone (the digits MLP) gets b = 1: one run at a time, each a plain scan.
    """
    if platform != "cpu":
        return "vmap", None
    fit = max(1, CACHE_BUDGET_BYTES // step_bytes)
    b = 2 ** int(math.log2(fit))
    if b >= chunk:
        return "vmap", None
    return "map", (None if b == 1 else b)


def _batched(f, strategy, map_batch):
    """f(per_run, shared) -> f over a leading run axis of `per_run` (a pytree)."""
    if strategy == "vmap":
        return jax.vmap(f, in_axes=(0, None))
    return lambda runs, shared: jax.lax.map(lambda run: f(run, shared), runs, batch_size=map_batch)


def _sharded(f, devices):
    if len(devices) == 1:
        return f
    from jax.sharding import Mesh, PartitionSpec as P
    mesh = Mesh(np.array(devices), ("runs",))
    # Runs never talk to each other (no collectives), so the varying-axes check, which
    # trips over loop carries built from replicated constants (Lanczos), is off.
    return jax.shard_map(f, mesh=mesh, in_specs=(P("runs"), P()), out_specs=P("runs"),
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
def _join_static(parts: list, static: dict) -> xr.Dataset:
    """One Dataset from the parts of a static sweep (in itertools.product order of
    `static`), concatenated along each static axis in turn, other coordinates joined
    outer: a probe dimension whose size changes with a static value (e.g. the attention
    maps' `block` with depth) is NaN where a part has no entry. (`combine_by_coords`
    would also try to order the parts by that coordinate, and mixed them.)"""
    def nest(items, sizes):
        if not sizes:
            return items[0]
        step = len(items) // sizes[0]
        return [nest(items[i * step:(i + 1) * step], sizes[1:]) for i in range(sizes[0])]
    return xr.combine_nested(nest(parts, [len(v) for v in static.values()]), concat_dim=list(static), join="outer",
                             combine_attrs="drop_conflicts")


def sweep(simulation, grid: dict | None = None, seeds=1, static: dict | None = None, *,
          chunk: int | None = None, memory_budget_mb: float | None = None,
          strategy: str = "auto", map_batch: int | None = None, segment: int | None = None,
          devices=None, base_seed: int = 0, progress: bool | None = None, checkpoint=None,
          name: str = "sweep", x64: bool | None = None) -> xr.Dataset:
    """Run every (seed x grid) combination; see the module docstring.

    simulation: a `Simulation`, or with `static` a builder `build(**static) -> Simulation`;
    grid: {hyperparameter: [values]} of traced axes; seeds: int or list of ints;
    static: {name: [values]} of axes that change shapes; chunk: runs in memory at once;
    memory_budget_mb: the budget `chunk` is chosen for; strategy: "auto", "vmap" or
    "map" (`map_batch` runs at a time); segment: record intervals per compiled call;
    devices: the devices the run axis is sharded over (default: all local ones, or with
    several JAX processes `jax.devices()`, every process's);
    checkpoint: a folder; this sweep checkpoints into and resumes from its subfolder
    `name` (`engine.checkpoint`); name: what the sweep is called (its checkpoint folder,
    its progress bar); x64: compute in float64 (True) or float32 (False), or as JAX is
    configured (None).
    """
    with precision(x64):
        grid = _check_grid({} if grid is None else grid)
        static = _check_static({} if static is None else static)
        both = set(grid) & set(static)
        require(not both, "grid", f"{sorted(both)} appear in both grid and static", "put each axis in one of them")
        seeds = seed_values(seeds)
        require(strategy in STRATEGIES, "strategy", f"unknown value {strategy!r}",
                f"use one of {', '.join(STRATEGIES)}")
        for field, v in (("map_batch", map_batch), ("chunk", chunk)):
            require(v is None or (isinstance(v, int) and v >= 1), field, f"got {v!r}", "use an integer >= 1")
        require(isinstance(name, str) and name.isidentifier(), "name", f"got {name!r}",
                "use a short identifier such as 'sweep' or 'quadratic'")
        devices = _devices(devices)
        build = _builder(simulation, static)
        combos = [dict(zip(static, vals)) for vals in itertools.product(*static.values())]
        sims = [build(**c) for c in combos]  # builds shapes only: no compilation yet
        for c, sim in zip(combos, sims):
            require(isinstance(sim, Simulation), "simulation", f"the builder returned {type(sim).__name__} for {c}",
                    "return engine.simulate.simulation(...)")
            for axis, values in grid.items():
                for v in values:
                    sim.check_hparams({axis: v})
        budget = _budget(devices) if memory_budget_mb is None else int(memory_budget_mb * 2**20)
        plans = [_plan(sim, len(seeds) * _size(grid), chunk, budget, devices, strategy, map_batch, segment)
                 for sim in sims]
        described = _description(sims, combos, grid, seeds, base_seed, plans, devices)
        _agree(described, sims, devices)
        folder = None if checkpoint is None else _claim(Path(checkpoint) / name, described, devices)
        show = (sys.stderr.isatty() and jax.process_index() == 0) if progress is None else progress
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(p["n_chunks"] * p["n_segments"] for p in plans), disable=not show, desc=name,
                   unit="segment")
        parts = []
        for i, (c, sim, plan) in enumerate(zip(combos, sims, plans)):
            records, flags = _run_all(sim, grid, seeds, base_seed, plan, devices, bar,
                                      None if folder is None else folder / f"part-{i}")
            ds = _dataset(sim, grid, seeds, records, flags)
            parts.append(ds.expand_dims({k: [v] for k, v in c.items()}) if c else ds)
        bar.close()
        ds = parts[0] if len(parts) == 1 else _join_static(parts, static)
        ds = ds.transpose("seed", *static, *grid, "step", ...)
        ds.attrs.update(_attrs(sims[0], grid, seeds, static, plans, devices, base_seed, name))
        return ds


@contextlib.contextmanager
def precision(x64: bool | None):
    """Inside the block JAX computes in float64 (x64=True), float32 (False) or as it is
    configured (None); JAX's `jax_enable_x64` is restored after it. The one place the
    engine changes it."""
    if x64 is None:
        yield
        return
    with jax.enable_x64(bool(x64)):
        yield


def _size(grid):
    return int(np.prod([len(v) for v in grid.values()])) if grid else 1


def _plan(sim, n_runs, chunk, budget, devices, strategy, map_batch, segment):
    need = footprint(sim)
    n_dev = len(devices)
    fits = budget // need.run
    if fits < 1:
        raise ConfigError("memory_budget_mb", f"one run needs about {need.run / 2**20:.1f} MiB, "
                          f"more than the budget of {budget / 2**20:.1f} MiB",
                          "raise memory_budget_mb, or shrink the model, data or records")
    if chunk is None:
        chunk = min(n_runs, int(fits) * n_dev)
    chunk = max(n_dev, math.ceil(chunk / n_dev) * n_dev)
    if strategy == "auto":
        strategy, map_batch = choose_strategy(need.step, devices[0].platform, chunk // n_dev)
    if strategy == "vmap" and chunk // n_dev == 1 and devices[0].platform == "cpu":
        # One run per device: XLA's CPU backend runs a batch of one ~10x slower than the
        # unbatched program (measured: width 4000, 298 us against 22 us per step).
        strategy, map_batch = "map", None
    k = _segment_length(sim.intervals, segment)
    return {"chunk": chunk, "n_chunks": math.ceil(n_runs / chunk), "strategy": strategy,
            "map_batch": map_batch if strategy == "map" else None, "segment": k,
            "n_segments": sim.intervals // k, "bytes_per_run": need.run}


def _devices(devices) -> list:
    """The devices to shard over: all of them by default (`multihost.default_devices`);
    devices of several processes ordered by process (`multihost.ordered`)."""
    devices = list(multihost.default_devices() if devices is None else devices)
    require(len(devices) >= 1, "devices", "no devices given", "omit devices= to use all of them")
    if not multihost.spans_processes(devices):
        return devices
    missing = sorted(set(range(jax.process_count())) - {d.process_index for d in devices})
    require(not missing, "devices", f"no devices of processes {missing}: a sweep over several processes needs "
            "every process", "pass devices=jax.devices(), or omit devices=")
    return multihost.ordered(devices)


def _budget(devices) -> int:
    """`memory_budget_bytes` of this process's devices; over several processes the
    smallest of them (in MiB), so that every process plans the same chunks."""
    mine = [d for d in devices if d.process_index == jax.process_index()]
    budget = memory_budget_bytes(mine)
    if not multihost.spans_processes(devices):
        return budget
    mib = multihost.exchange([min(budget >> 20, 2**31 - 1)], devices, "agreeing on the memory budget")
    return int(mib.min()) << 20


def _description(sims, combos, grid, seeds, base_seed, plans, devices) -> dict:
    """What makes a sweep the same sweep (its checkpoint fingerprint)."""
    keys = ("chunk", "n_chunks", "segment", "n_segments", "strategy", "map_batch")
    out = {"sims": [s.config for s in sims], "static": [repr(c) for c in combos], "grid": grid, "seeds": seeds,
           "base_seed": base_seed, "plans": [{k: p[k] for k in keys} for p in plans], "devices": len(devices),
           "x64": bool(jax.config.jax_enable_x64)}
    if multihost.spans_processes(devices):  # which process holds which rows
        out["processes"] = [d.process_index for d in devices]
    return out


def _agree(described: dict, sims, devices) -> None:
    """Over several processes: ConfigError in every process unless all of them were
    given the same sweep (grid, seeds, static values, options, simulations and their
    data), compared by a fingerprint exchanged with JAX's collectives."""
    if not multihost.spans_processes(devices):
        return
    data = [hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(s.data))).hexdigest()
            for s in sims]
    print_ = checkpoint.fingerprint({**described, "data": data})
    got = multihost.exchange([ord(c) for c in print_], devices, "comparing the sweep's fingerprint")
    differ = [p for p, row in enumerate(got) if (row != got[0]).any()]
    require(not differ, "sweep", f"processes {differ} were given another sweep than process 0 (fingerprints "
            f"{', '.join(bytes(r.astype(np.uint8)).decode() for r in got)}: the grid, seeds, static values, "
            "options, simulation or data differ)", "start every process with the same script and arguments")


def _claim(folder: Path, described: dict, devices) -> Path:
    """Take `folder` for this sweep, or check that the checkpoint there is of it; over
    several processes each takes `folder/process-<p>`, and a resume needs all of them.
    Returns the folder this process checkpoints into."""
    print_ = checkpoint.fingerprint(described)
    if not multihost.spans_processes(devices):
        require(not list(folder.glob("process-*/meta.json")), "checkpoint",
                f"{folder} holds the checkpoint of a sweep over several processes",
                "resume it with the same processes (jax.distributed.initialize), or delete that folder")
        require(checkpoint.found(folder, print_) != checkpoint.OTHER, "checkpoint",
                f"{folder} holds a checkpoint of a different sweep",
                "resume with the same config, or delete that folder to start over")
        checkpoint.claim(folder, print_)
        return folder
    mine = folder / f"process-{jax.process_index()}"
    status = checkpoint.OTHER if (folder / "meta.json").exists() else checkpoint.found(mine, print_)
    got = multihost.exchange([status], devices, "comparing checkpoints")[:, 0]
    other = [p for p, st in enumerate(got) if st == checkpoint.OTHER]
    require(not other, "checkpoint", f"{folder} holds a checkpoint of a different sweep (seen by processes {other})",
            "resume with the same config and processes, or delete that folder to start over")
    missing = [p for p, st in enumerate(got) if st == checkpoint.NONE]
    require(not missing or len(missing) == len(got), "checkpoint",
            f"processes {missing} find no checkpoint in {folder}/process-<p>, the others do: a resume needs the "
            "checkpoint of every process", "give every process its checkpoint folder back, or delete all of "
            f"{folder} to start over")
    checkpoint.claim(mine, print_)
    return mine


def _resume_point(files: dict, devices, ci: int) -> tuple[bool, int]:
    """(all done, first segment to run) of chunk `ci`, agreed by every process. Over
    several processes a state is committed only once every process has written it
    (`_run_all`), so their checkpoints are at most one segment apart and the one behind
    holds the next state as "next": it is promoted, and all go on from the same segment."""
    mine = checkpoint.progress(files)
    table = multihost.exchange(mine, devices, "comparing checkpoint progress")
    if table[:, 0].all():
        return True, 0
    target = max(0, int(table[:, 1].max()))
    behind = [p for p, (_, s, n) in enumerate(table) if target and target not in (s, n)]
    require(not behind, "checkpoint", f"the checkpoints of processes {behind} stop before segment {target} of "
            f"chunk {ci}, which the others reached", "delete the checkpoint folder to start over")
    if target and mine[1] != target:
        os.replace(files["next"], files["state"])
    else:
        files["next"].unlink(missing_ok=True)  # never committed: it is computed again
    return False, target


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


def _program(sim: Simulation, what: tuple, fn: Callable, args: tuple, devices):
    """`fn` batched and sharded as `what` = (strategy, map_batch, ...) says, compiled for
    arguments shaped like `args`, once per simulation: (program, seconds compiling now)."""
    shapes = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(args))
    key = (*what, tuple(d.id for d in devices), bool(jax.config.jax_enable_x64), jax.tree.structure(args), shapes)
    if key in sim.compiled:
        return sim.compiled[key], 0.0
    t = time.perf_counter()
    program = jax.jit(_sharded(_batched(fn, *what[1:3]), devices)).lower(*args).compile()
    sim.compiled[key] = program
    return program, time.perf_counter() - t


def _run_all(sim, grid, seeds, base_seed, plan, devices, bar, folder: Path | None = None):
    """Every chunk of runs, segment by segment, with the compiled programs of `sim`
    (compiled ahead of time on first use, so the compile and run times can be reported
    in `plan["seconds"]`). With `folder`, each segment's records and the state after it
    are saved there, and what is saved is picked up again (`engine.checkpoint`).

    Over devices of several processes (`engine.multihost`), the run table and the
    shared arguments become global arrays of which each process feeds its own shards,
    records and flags are gathered to every process, and each process checkpoints its
    rows of the state: into "next", then, once every process has written its own (a
    barrier), renamed to "state"."""
    keys, hp, n_runs = _run_table(grid, seeds, base_seed)
    dtype = jnp.result_type(float)
    chunk, k = plan["chunk"], plan["segment"]
    batching = (plan["strategy"], plan["map_batch"])
    multi = multihost.spans_processes(devices)
    replicated = lambda tree: multihost.put(tree, devices, jax.sharding.PartitionSpec())
    start_run = lambda run, data: sim.init(run[0], run[1], data)
    # the shared argument: the data and the index of the segment's first record
    advance = lambda state, shared: sim.advance(state, shared[0], k, shared[1])
    data = replicated(sim.data)
    records, flags, t_compile, t0 = [], [], 0.0, time.perf_counter()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    for ci, first_run in enumerate(range(0, n_runs, chunk)):
        files = None if folder is None else checkpoint.chunk_files(folder, ci)
        finished, done = _resume_point(files, devices, ci) if files else (False, 0)
        if finished:
            saved = checkpoint.load_arrays(files["done"])
            records.append({n[4:]: v for n, v in saved.items() if n.startswith("rec_")})
            flags.append({n[5:]: v for n, v in saved.items() if n.startswith("flag_")})
            bar.update(plan["n_segments"])
            continue
        idx = np.minimum(np.arange(first_run, first_run + chunk), n_runs - 1)  # pad with copies
        keep = min(chunk, n_runs - first_run)
        runs = multihost.put((keys[idx], {name: jnp.asarray(v[idx], dtype) for name, v in hp.items()}), devices)
        init, seconds = _program(sim, ("init", *batching), start_run, (runs, data), devices)
        state, rec0 = init(runs, data)
        segment, more = _program(sim, ("advance", *batching, k), advance, (state, (data, replicated(jnp.int32(0)))),
                                 devices)
        t_compile += seconds + more
        plan["compiled_memory_mb"] = _footprint_mb(segment)
        segs = [{n: v[:keep, None] for n, v in multihost.gather(rec0).items()}]
        if done:
            state, extra = checkpoint.load_state(files["state"], state)
            assert int(extra["segment"]) == done, (extra["segment"], done)
            segs += [checkpoint.load_arrays(files["seg"](j)) for j in range(done)]
            bar.update(done)
        for j in range(done, plan["n_segments"]):
            state, rec = segment(state, (data, replicated(jnp.int32(j * k))))
            segs.append({n: v[:keep] for n, v in multihost.gather(rec).items()})
            if files:  # the segment's records first: a state file always has all of its
                checkpoint.save_arrays(files["seg"](j), segs[-1])
                checkpoint.save_state(files["next" if multi else "state"], state, {"segment": np.int64(j + 1)})
                if multi:
                    multihost.barrier(f"chunk {ci} segment {j} saved", devices)
                    os.replace(files["next"], files["state"])
            bar.update(1)
        records.append({name: np.concatenate([s[name] for s in segs], axis=1) for name in rec0})
        flags.append({f: v[:keep] for f, v in multihost.gather(final_values(state)).items()})
        if files:
            checkpoint.save_done(files, records[-1], flags[-1])
            if multi:  # every process's "done" exists before any state is dropped
                multihost.barrier(f"chunk {ci} done", devices)
            checkpoint.drop_progress(files, plan["n_segments"])
    plan["seconds"] = {"compile": round(t_compile, 4),
                       "run": round(time.perf_counter() - t0 - t_compile, 4)}
    join = lambda parts: {n: np.concatenate([p[n] for p in parts], axis=0) for n in parts[0]}
    return join(records), join(flags)


def _dataset(sim, grid, seeds, records, flags) -> xr.Dataset:
    shape = (len(seeds), *[len(v) for v in grid.values()])
    dims = ("seed", *grid)
    coords = {"seed": seeds, **grid, "step": sim.record_steps}
    data_vars = {}
    for name, extra in sim.probe.outputs.items():
        arr = records[name]
        data_vars[name] = ((*dims, "step", *extra), arr.reshape(*shape, *arr.shape[1:]))
        for i, d in enumerate(extra):
            if d in sim.probe_coords and len(sim.probe_coords[d]) == arr.shape[2 + i]:
                coords[d] = sim.probe_coords[d]
    for f, arr in flags.items():
        data_vars[f] = (dims, arr.reshape(shape)) if arr.ndim == 1 else (
            (*dims, "snapshot_step", "parameter"), arr.reshape(*shape, *arr.shape[1:]))
    if sim.snapshot_steps is not None:
        coords["snapshot_step"] = sim.snapshot_steps
    return xr.Dataset(data_vars, coords=coords)


PACKAGES = ("jax", "jaxlib", "optax", "flax", "chex", "numpy", "xarray", "matplotlib")


def versions() -> dict:
    """Python's version and the installed versions of the stack (`PACKAGES`), recorded
    with every result."""
    out = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _attrs(sim, grid, seeds, static, plans, devices, base_seed, name) -> dict:
    config = {**sim.config, "grid": grid, "seeds": seeds, "name": name,
              "static": {k: [v if isinstance(v, (int, float, str)) else repr(v) for v in vals]
                         for k, vals in static.items()},
              "base_seed": base_seed, "plans": plans}
    return {"config": json.dumps(config, default=str), "versions": json.dumps(versions()),
            "device": f"{devices[0].platform}:{devices[0].device_kind} x{len(devices)}" + (
                f" over {len({d.process_index for d in devices})} processes" if multihost.spans_processes(devices) else ""),
            "device_kind": devices[0].device_kind, "x64": int(jax.config.jax_enable_x64),
            "matmul_precision": str(jax.config.jax_default_matmul_precision or "default")}


# ----------------------------------------------------------------------------- files
def snapshots_path(path) -> Path:
    """Where `save` puts a sweep's parameter snapshots: beside `path`, NAME.snapshots.nc."""
    path = Path(path)
    return path.with_name(f"{path.stem}.snapshots{path.suffix or '.nc'}")


def save(ds: xr.Dataset, path) -> None:
    """Write `ds` as netCDF atomically (`engine.checkpoint.replacing`): a crash leaves
    the previous file or none, never a half-written one that looks complete. Parameter
    snapshots (dim "parameter": runs x snapshots x parameters, the large part) go to
    their own file (`snapshots_path`), so the results stay small to open and share."""
    big = [n for n in ds.data_vars if "parameter" in ds[n].dims]
    if big:
        with checkpoint.replacing(snapshots_path(path)) as tmp:
            ds[big].to_netcdf(tmp)
    with checkpoint.replacing(path) as tmp:
        ds.drop_vars(big).to_netcdf(tmp)


def load(path) -> xr.Dataset:
    """Read a saved sweep back into memory, with its parameter snapshots if saved."""
    with xr.open_dataset(os.fspath(path)) as ds:
        ds = ds.load()
    if snapshots_path(path).exists():
        with xr.open_dataset(os.fspath(snapshots_path(path))) as snaps:
            ds = ds.merge(snaps.load(), combine_attrs="override")
    return ds


def config_of(ds: xr.Dataset) -> dict:
    """The configuration a sweep recorded in its attrs."""
    return json.loads(ds.attrs["config"])
