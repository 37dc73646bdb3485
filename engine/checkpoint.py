"""Checkpoints of a sweep between segments, so a killed sweep resumes where it stopped.

A sweep given `checkpoint=DIR` owns the folder `DIR/<its name>` and writes there, for
every chunk of runs it is advancing, the run state after each segment
(`part-<p>/chunk-<i>.state.npz`, p the static combination: params, optimizer state
with its hyperparameters, probe states such as eigenvector warm starts, keys, flags,
the next segment index) and that segment's records
(`chunk-<i>.seg-<j>.npz`); a finished chunk becomes one `chunk-<i>.done.npz`. Every file
is written to a temporary name, flushed and renamed (`replacing`), so a crash leaves
either the old file or the new one, never half of one; a rerun first deletes the
temporaries that killed writers left behind. On a rerun the same sweep loads what is
there and goes on: the compiled segment is the same function of the same state, so the
results equal an uninterrupted sweep's bit for bit. `meta.json` holds a fingerprint of the sweep
(simulation config, grid, seeds, chunking); a checkpoint of a different sweep is refused.

A sweep over the devices of several processes (`engine.multihost`) keeps one such folder
per process, `DIR/<name>/process-<p>/`, holding that process's rows of the state and
the (gathered) records; a resume needs every process's folder. A state is first written
as `chunk-<i>.state.next.npz` and renamed to `.state.npz` once every process has written
its own, so the processes' checkpoints are never more than one segment apart and a
rerun goes on from a segment every one of them has.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from engine.multihost import from_local_rows, local_rows


def fingerprint(obj) -> str:
    """A short hash of a JSON-able description (of a sweep)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


NONE, SAME, OTHER = 0, 1, 2  # what `found` finds in a checkpoint folder


def found(directory: Path, print_: str) -> int:
    """NONE: no checkpoint in `directory`; SAME: one of the sweep with fingerprint
    `print_`; OTHER: one of a different sweep."""
    meta = Path(directory) / "meta.json"
    if not meta.exists():
        return NONE
    return SAME if json.loads(meta.read_text()).get("fingerprint") == print_ else OTHER


def claim(directory: Path, print_: str) -> None:
    """Create `directory` for the sweep with fingerprint `print_` (once `found` has
    answered NONE or SAME), removing the temporaries that killed writers left there."""
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    meta = directory / "meta.json"
    if not meta.exists():
        _atomic(meta, lambda f: f.write(json.dumps({"fingerprint": print_}).encode()))


@contextlib.contextmanager
def replacing(path):
    """Write a file atomically: yields a temporary path `.<name>.tmp-<pid>` beside `path`;
    once the block has written it, it is flushed to disk and renamed onto `path`. A crash
    (even SIGKILL mid-write) leaves the old file or none, never half of one; the stray
    temporary is removed by `remove_stale_temporaries`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory, recursive: bool = True) -> list[Path]:
    """Delete the half-written temporaries that killed writers left in `directory`
    (those of this process or of processes that no longer exist); returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = []
    for tmp in (directory.rglob if recursive else directory.glob)(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            stale.append(tmp)
    return stale


def _atomic(path: Path, write) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_arrays(path: Path, arrays: dict) -> None:
    """{name: array} to an .npz, atomically."""
    _atomic(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def load_arrays(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def save_state(path: Path, state, extra: dict) -> None:
    """The leaves of a pytree (PRNG keys as their raw data) plus `extra` arrays. Of a
    state spread over several processes, each process saves the rows it holds
    (`multihost.local_rows`)."""
    leaves = jax.tree.leaves(state)
    arrays = {f"leaf_{i}": local_rows(jax.random.key_data(x) if _is_key(x) else x) for i, x in enumerate(leaves)}
    save_arrays(path, {**arrays, **{f"extra_{k}": v for k, v in extra.items()}})


def load_state(path: Path, like):
    """(state, extra): the saved leaves put back in the structure and on the devices
    (shardings) of `like`, a freshly initialized state of the same sweep (over several
    processes: this process's rows, `multihost.from_local_rows`)."""
    arrays = load_arrays(path)
    leaves, treedef = jax.tree.flatten(like)
    out = []
    for i, ref in enumerate(leaves):
        x = arrays[f"leaf_{i}"]
        if ref.is_fully_addressable:
            x = jax.random.wrap_key_data(jnp.asarray(x), impl=jax.random.key_impl(ref)) if _is_key(ref) else x
            out.append(jax.device_put(x, ref.sharding))
        elif _is_key(ref):
            data = from_local_rows(x, (*ref.shape, *x.shape[1:]), ref.sharding)
            out.append(jax.random.wrap_key_data(data, impl=jax.random.key_impl(ref)))
        else:
            out.append(from_local_rows(x, ref.shape, ref.sharding))
    extra = {k[len("extra_"):]: v for k, v in arrays.items() if k.startswith("extra_")}
    return jax.tree.unflatten(treedef, out), extra


def chunk_files(folder: Path, ci: int) -> dict:
    """The files of chunk `ci` in a sweep's checkpoint folder: "done" (its records and
    flags once finished), "state" (the state after the last saved segment), "next" (over
    several processes: the state after the next segment, until every process has
    written its own) and "seg"(j) (segment j's records)."""
    return {"done": folder / f"chunk-{ci}.done.npz", "state": folder / f"chunk-{ci}.state.npz",
            "next": folder / f"chunk-{ci}.state.next.npz", "seg": lambda j: folder / f"chunk-{ci}.seg-{j}.npz"}


def progress(files: dict) -> tuple[int, int, int]:
    """(done, s, n) of a chunk: 1 if its "done" file exists; the segments its "state"
    and "next" files have completed (-1: no such file)."""
    def segments(path):
        if not path.exists():
            return -1
        with np.load(path) as z:
            return int(z["extra_segment"])
    return int(files["done"].exists()), segments(files["state"]), segments(files["next"])


def save_done(files: dict, records: dict, flags: dict) -> None:
    """A finished chunk's records and flags as one "done" file."""
    save_arrays(files["done"], {**{f"rec_{n}": v for n, v in records.items()},
                                **{f"flag_{f}": v for f, v in flags.items()}})


def drop_progress(files: dict, n_segments: int) -> None:
    """Remove a finished chunk's segment and state files (its "done" file holds all)."""
    for j in range(n_segments):
        files["seg"](j).unlink(missing_ok=True)
    files["state"].unlink(missing_ok=True)
    files["next"].unlink(missing_ok=True)


def finish_chunk(files: dict, n_segments: int, records: dict, flags: dict) -> None:
    """Replace a finished chunk's segment files and state by one "done" file."""
    save_done(files, records, flags)
    drop_progress(files, n_segments)
