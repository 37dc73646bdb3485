"""Several processes, one sweep, on JAX's own multi-controller runtime.

After `jax.distributed.initialize(...)` in every process (or `initialize()` below),
`jax.devices()` lists the devices of all processes and each process drives its own
(`jax.local_devices()`). A sweep over devices of several processes lays its run axis
over one global mesh of them, ordered by process (`ordered`): process p holds a
contiguous block of rows of every chunk. Every process runs the same Python program:

- it builds the whole run table (keys, hyperparameters), which is cheap, and feeds only
  the rows of its own devices (`put`: `jax.make_array_from_callback`, which asks for the
  addressable shards only);
- the compiled segment has no collectives (runs never talk to each other), so each
  process advances its rows alone;
- records and final flags are gathered to every process (`gather`:
  `multihost_utils.process_allgather`), so each returns the same Dataset;
- small agreements (a fingerprint of the sweep, the memory budget, checkpoint progress,
  barriers) are `exchange`s of a few int32 over the same mesh: JAX's collectives (gloo
  on CPU, NCCL / ICI on accelerators), no sockets or files of our own;
- a checkpoint holds, per process, that process's rows of the state (`local_rows`,
  `from_local_rows`).

A process that dies makes the next collective fail in the others (on CPU gloo reports
the closed connection at once); that failure is raised as `ProcessLost`. JAX's
coordination service then ends the survivors at exit, once the dead process misses
`heartbeat_timeout_seconds` of heartbeats (an argument of `jax.distributed.initialize`).

Within one process (the usual case) every function here is the identity or a no-op, so
a one-process sweep runs exactly the program it ran before.
"""
from __future__ import annotations

import contextlib
import os
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


class ProcessLost(RuntimeError):
    """Another process of a multi-process sweep stopped (or cannot be reached)."""


def default_devices() -> list:
    """Every process's devices when JAX runs several processes, else the local ones."""
    return jax.devices() if jax.process_count() > 1 else jax.local_devices()


def spans_processes(devices) -> bool:
    return any(d.process_index != jax.process_index() for d in devices)


def ordered(devices) -> list:
    """`devices` sorted by (process, id): each process's rows of the run axis are one
    contiguous block, in process order."""
    return sorted(devices, key=lambda d: (d.process_index, d.id))


def sharding(devices, spec=P("runs")) -> NamedSharding:
    """Runs split over `devices` (spec P("runs")) or replicated on all of them (P())."""
    return NamedSharding(Mesh(np.array(devices), ("runs",)), spec)


_STATUS = re.compile(r"^[A-Z_]+: ")  # an XLA runtime status: "UNKNOWN: Gloo AllGather failed ..."


@contextlib.contextmanager
def collective(what: str):
    """Turn the runtime error of a collective whose peer died into `ProcessLost` (the
    runtime raises it as JaxRuntimeError, or as ValueError for an UNKNOWN status)."""
    try:
        yield
    except (jax.errors.JaxRuntimeError, ValueError) as e:
        text = str(e).strip()
        if isinstance(e, ValueError) and not _STATUS.match(text):
            raise
        first = text.splitlines()[0] if text else type(e).__name__
        raise ProcessLost(
            f"process {jax.process_index()} of {jax.process_count()}: {what} failed, so another process "
            f"of this sweep has stopped or cannot be reached ({first}). A sweep over several processes "
            "stops with it; every process's checkpoint is kept: start all processes again with the same "
            "arguments to resume") from e


def put(tree, devices, spec=P("runs")):
    """Host arrays (the same full value in every process) as global arrays over
    `devices`, each process materializing only its own shards. One process: unchanged."""
    if not spans_processes(devices):
        return tree
    s = sharding(devices, spec)
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), s, lambda idx: x[idx]), tree)


def gather(tree):
    """The full values of a pytree of arrays [runs, ...] that may span processes, in
    every process, as numpy arrays. Over several processes each process packs its rows
    of every leaf into one byte matrix, so that one collective (and one compiled
    program per layout) gathers them all."""
    leaves, treedef = jax.tree.flatten(tree)
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
    rows = [np.ascontiguousarray(local_rows(x)) for x in leaves]
    packed = np.concatenate([r.reshape(len(r), -1).view(np.uint8) for r in rows], axis=1)
    like = leaves[0].sharding
    whole = from_local_rows(packed, (leaves[0].shape[0], packed.shape[1]), NamedSharding(like.mesh, P("runs")))
    from jax.experimental import multihost_utils
    with collective("gathering results"):
        whole = np.asarray(multihost_utils.process_allgather(whole, tiled=True))
    out, at = [], 0
    for x, r in zip(leaves, rows):
        width = r[:1].reshape(1, -1).view(np.uint8).shape[1]
        out.append(np.ascontiguousarray(whole[:, at:at + width]).view(r.dtype).reshape(x.shape))
        at += width
    return jax.tree.unflatten(treedef, out)


def local_rows(x) -> np.ndarray:
    """The rows of `x` [runs, ...] that this process holds (all of them in one process)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def from_local_rows(rows: np.ndarray, shape, sharding_):
    """The inverse of `local_rows`: this process's `rows` as part of a global array of
    `shape` placed by `sharding_`."""
    if sharding_.is_fully_addressable:
        return jax.device_put(rows, sharding_)
    first = min(idx[0].start or 0 for idx in sharding_.addressable_devices_indices_map(tuple(shape)).values())
    shift = lambda idx: (slice((idx[0].start or 0) - first, (shape[0] if idx[0].stop is None else idx[0].stop) - first),
                         *idx[1:])
    return jax.make_array_from_callback(tuple(shape), sharding_, lambda idx: rows[shift(idx)])


EXCHANGE_WIDTH = 64  # int32 per process in every `exchange`: one compiled program for all


def exchange(values, devices, what: str = "agreeing with the other processes") -> np.ndarray:
    """[processes, k]: the int32 `values` [k <= EXCHANGE_WIDTH] of every process that
    has devices in `devices`, in process order (one collective). One process:
    `values[None]`."""
    values = np.asarray(values, np.int32).reshape(-1)
    if not spans_processes(devices):
        return values[None]
    row = np.zeros(EXCHANGE_WIDTH, np.int32)
    row[:values.size] = values
    full = np.broadcast_to(row, (len(devices), EXCHANGE_WIDTH))  # only our own rows are read
    rows = jax.make_array_from_callback(full.shape, sharding(devices), lambda idx: full[idx])
    from jax.experimental import multihost_utils
    with collective(what):
        got = np.asarray(multihost_utils.process_allgather(rows, tiled=True))
    first = {}
    for d, r in zip(devices, got):
        first.setdefault(d.process_index, r[:values.size])
    return np.stack([first[p] for p in sorted(first)])


def barrier(name: str, devices=None) -> None:
    """Wait until every process reaches the barrier called `name` (a collective); a
    process at another barrier is a bug, reported as such."""
    devices = default_devices() if devices is None else devices
    code = np.frombuffer(name.encode().ljust(64)[:64], np.uint8).astype(np.int32)
    got = exchange(code, devices, f"waiting for every process at {name!r}")
    if (got != got[0]).any():
        raise RuntimeError(f"processes reached different barriers: {[bytes(r.astype(np.uint8)).decode().strip() for r in got]}")


def initialize() -> None:
    """`jax.distributed.initialize()` as JAX detects the cluster (SLURM, Open MPI, Cloud
    TPU, Kubernetes ...). On a bare machine set JAX_COORDINATOR_ADDRESS (read by JAX),
    and JAX_NUM_PROCESSES and JAX_PROCESS_ID (passed on here)."""
    kw = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        kw["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in os.environ:
        kw["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kw)
