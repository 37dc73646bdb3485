"""Sweeps over several real processes on localhost, on JAX's distributed runtime with its
CPU collectives (gloo): the same results as one process, a diverging run stays on its
process, a fingerprint check refuses processes given different sweeps, a process killed
with SIGKILL makes the others fail (not hang), and a rerun resumes from the checkpoints
of every process. Every subprocess runs under a hard deadline."""
import functools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import xarray as xr

from engine import data, init, models, optim, simulate, sweep

ROOT = Path(__file__).resolve().parents[1]
GRID = {"lr": [0.05, 40.0, 0.1, 0.2]}  # lr = 40 diverges
STABLE = {"lr": [0.05, 0.1, 0.2]}

SCRIPT = textwrap.dedent("""
    import os, pathlib, sys, time
    pid, n, port, out, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], pathlib.Path(sys.argv[4]), sys.argv[5]
    import engine, jax
    # a dead peer fails the others' next collective at once; JAX's coordination service
    # then ends them at exit after this many seconds without its heartbeat (shorter where
    # a process is killed, longer where 4 processes share 2 busy cores)
    beat = 5 if mode == "slow" else 15
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid, initialization_timeout=60,
                               heartbeat_timeout_seconds=beat, shutdown_timeout_seconds=beat)
    from engine import checkpoint, data, init, models, optim, simulate, sweep
    from engine.errors import ConfigError
    model = models.mlp((1, 32, 1), "relu")
    sim = simulate.simulation(model, data.luo_points(), "mse", optim.gd(), init.luo(model),
                              steps=60, every=10, probes=("loss", "relative_change_layer"))
    kw = dict(grid={"lr": [0.05, 40.0, 0.1, 0.2]}, seeds=2, chunk=4, segment=1, progress=False)
    if mode == "slow":  # slow enough to be killed part-way
        save = checkpoint.save_arrays
        checkpoint.save_arrays = lambda *a, **k: (time.sleep(0.15), save(*a, **k))
    else:
        try:  # process p is given p + 2 seeds
            sweep.sweep(sim, **{**kw, "seeds": 2 + pid})
            raise AssertionError("different sweeps were not refused")
        except ConfigError as e:
            print("DIFFERENT:", e, flush=True)
    ds = sweep.sweep(sim, **kw, checkpoint=out / "ckpt")
    print("DEVICE:", ds.attrs["device"], flush=True)
    if pid == 0:
        sweep.save(ds, out / "results.nc")
    if mode == "check":  # a process's checkpoint is gone: a resume is refused in every process
        if pid == n - 1:
            import shutil
            shutil.rmtree(out / "ckpt" / "sweep" / f"process-{pid}")
        try:
            sweep.sweep(sim, **kw, checkpoint=out / "ckpt")
            raise AssertionError("a resume without every checkpoint was not refused")
        except ConfigError as e:
            print("MISSING:", e, flush=True)
    print("OK", flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, n: int, devices: int, mode: str, out: Path) -> list[subprocess.Popen]:
    script = tmp_path / "distributed_sweep.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", ENGINE_CPU_DEVICES=str(devices), PYTHONPATH=str(ROOT),
               PYTHONUNBUFFERED="1")
    port = _free_port()
    return [subprocess.Popen([sys.executable, str(script), str(p), str(n), str(port), str(out), mode],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for p in range(n)]


def _finish(procs, timeout: float) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of each process; all are killed at the deadline."""
    deadline, results = time.time() + timeout, []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


@functools.cache
def _reference(lrs: tuple) -> xr.Dataset:
    """The one-process sweep: one device, in this process, chunks of 4 runs (one
    compiled program for both grids)."""
    import jax
    return sweep.sweep(_sim(), grid={"lr": list(lrs)}, seeds=2, chunk=4, progress=False,
                       devices=jax.local_devices()[:1])


@functools.cache
def _sim():
    model = models.mlp((1, 32, 1), "relu")
    return simulate.simulation(model, data.luo_points(), "mse", optim.gd(), init.luo(model),
                               steps=60, every=10, probes=("loss", "relative_change_layer"))


def _assert_equal_to_one_process(ds: xr.Dataset):
    """Trajectories and flags bit for bit; a quantity measured from the trajectory to
    1e-6 (it is compiled into a partitioned program; see engine/sweep.py)."""
    one = _reference(tuple(GRID["lr"]))
    for name in ("loss", "diverged", "diverged_step", "converged", "converged_step"):
        np.testing.assert_array_equal(ds[name].values, one[name].values, err_msg=name)
    xr.testing.assert_allclose(ds.drop_attrs(), one.drop_attrs(), rtol=1e-6)
    # lr = 40 diverges on the process holding it; the runs of the others are those of
    # a sweep without it, bit for bit
    assert bool(ds.diverged.sel(lr=40.0).all()) and not bool(ds.diverged.sel(lr=STABLE["lr"]).any())
    np.testing.assert_array_equal(ds.loss.sel(lr=STABLE["lr"]).values, _reference(tuple(STABLE["lr"])).loss.values)


def test_four_processes_equal_one_process(tmp_path):
    """4 processes x 1 host device, chunks of 4 runs: process p holds the p-th lr of each
    chunk, so lr = 40 diverges on process 1 alone. Processes given different seeds are
    refused by the fingerprint check, and so is a resume without process 3's checkpoint."""
    results = _finish(_start(tmp_path, 4, 1, "check", tmp_path), timeout=150)
    for p, (rc, out, err) in enumerate(results):
        assert rc == 0 and "OK" in out, f"process {p}: {out[-1500:]}{err[-3000:]}"
        assert "DEVICE: cpu:cpu x4 over 4 processes" in out
        assert "processes [1, 2, 3] were given another sweep than process 0" in out
        assert "processes [3] find no checkpoint" in out and "a resume needs the checkpoint of every process" in out
    _assert_equal_to_one_process(sweep.load(tmp_path / "results.nc"))


def test_a_killed_process_fails_the_other_and_a_rerun_resumes(tmp_path):
    """2 processes x 2 host devices (process 0 holds lr 0.05 and 40 of each chunk,
    process 1 lr 0.1 and 0.2): process 1 is SIGKILLed in the second chunk; process 0
    fails within seconds (no hang) and keeps its checkpoint; both started again resume
    and give the one-process results."""
    procs = _start(tmp_path, 2, 2, "slow", tmp_path)
    part = tmp_path / "ckpt" / "sweep" / "process-1" / "part-0"
    deadline = time.time() + 120
    try:
        while not ((part / "chunk-0.done.npz").exists() and (part / "chunk-1.state.npz").exists()):
            assert all(p.poll() is None for p in procs), _finish(procs, 5)
            assert time.time() < deadline, "the sweep did not reach its second chunk"
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        results = _finish(procs, timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert time.time() - killed < 55  # not killed at the deadline: they ended by themselves
    assert results[1][0] == -signal.SIGKILL
    rc, out, err = results[0]
    assert rc != 0 and "OK" not in out, f"process 0 did not fail: {out[-1500:]}{err[-1500:]}"
    assert "ProcessLost: process 0 of 2" in err and "another process of this sweep has stopped" in err, err[-3000:]
    assert not (tmp_path / "results.nc").exists()
    assert int(np_load(part / "chunk-1.state.npz")["extra_segment"]) < 6  # it stopped mid-chunk

    results = _finish(_start(tmp_path, 2, 2, "resume", tmp_path), timeout=150)
    for p, (rc, out, err) in enumerate(results):
        assert rc == 0 and "OK" in out, f"process {p}: {out[-1500:]}{err[-3000:]}"
    _assert_equal_to_one_process(sweep.load(tmp_path / "results.nc"))


def np_load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_experiment_command_line_with_distributed(tmp_path):
    """`python -m experiments.<name> --distributed` on a bare machine (JAX reads
    JAX_COORDINATOR_ADDRESS; JAX_NUM_PROCESSES and JAX_PROCESS_ID are passed on), 2
    processes x 1 device: process 0 alone writes the contract's files and prints the
    summary; the results equal a one-process run's."""
    from engine import experiment
    from experiments import frequency_principle as fp
    out = tmp_path / "run"
    argv = ["--distributed", "--out", str(out), "--seeds", "2", "--set", "steps=200", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", ENGINE_CPU_DEVICES="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.frequency_principle", *argv], cwd=tmp_path,
                              env={**env, "JAX_PROCESS_ID": str(p)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for p in range(2)]
    (rc0, out0, err0), (rc1, out1, err1) = _finish(procs, timeout=150)
    assert rc0 == 0 and rc1 == 0, (err0[-3000:], err1[-3000:])
    assert '"experiment": "frequency_principle"' in out0 and '"experiment"' not in out1
    assert {p.name for p in out.iterdir()} == {"results.nc", "config.json", "summary.json", "frequency_principle.png"}
    ds = sweep.load(out / "results.nc")
    assert ds.attrs["device"].endswith("x2 over 2 processes")
    config = {**experiment.parse_set(["steps=200"], fp.PRESETS["quick"]), "seeds": 2}
    experiment.run(fp, config, tmp_path / "one", progress=False)
    one = sweep.load(tmp_path / "one" / "results.nc")
    np.testing.assert_array_equal(ds.loss.values, one.loss.values)
    xr.testing.assert_allclose(ds.drop_attrs(), one.drop_attrs(), rtol=1e-6)
