"""Checkpoint and resume: a sweep killed mid-run and rerun gives the uninterrupted results."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from engine import checkpoint, experiment, probes, sweep
from engine.errors import ConfigError

SCRIPT = """
import sys
from engine import data, init, models, optim, probes, simulate, sweep
model = models.mlp((1, 32, 32, 1), "tanh")
sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(), init.scaled(model), steps=2000,
                          every=25, probes=("loss", probes.sharpness(iters=10, warm_iters=5)))
ds = sweep.sweep(sim, grid={"lr": [0.05, 0.1]}, seeds=4, chunk=4, segment=2, checkpoint=sys.argv[1])
sweep.save(ds, sys.argv[2])
"""


def _assert_identical(a: xr.Dataset, b: xr.Dataset):
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_a_sigkilled_sweep_resumes_to_identical_results(tmp_path):
    script = tmp_path / "sweep_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = lambda ckpt, out: [sys.executable, str(script), str(tmp_path / ckpt), str(tmp_path / out)]
    proc = subprocess.Popen(run("ckpt", "resumed.nc"), env=env, stderr=subprocess.PIPE)
    part = tmp_path / "ckpt" / "sweep" / "part-0"
    deadline = time.time() + 300
    # kill it once the first chunk is done and the second is part-way
    while not ((part / "chunk-0.done.npz").exists() and (part / "chunk-1.state.npz").exists()):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "resumed.nc").exists()
    saved = checkpoint.load_arrays(part / "chunk-1.state.npz")
    assert 0 < int(saved["extra_segment"]) < 40  # stopped mid-chunk
    for args in (run("ckpt", "resumed.nc"), run("fresh", "uninterrupted.nc")):
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    _assert_identical(sweep.load(tmp_path / "resumed.nc"), sweep.load(tmp_path / "uninterrupted.nc"))


def test_interrupted_in_process_resume_equals_one_go(tmp_path, monkeypatch, tiny_sim):
    # the sharpness every 3rd record, segments of 2: its cadence crosses segment boundaries
    sim = tiny_sim(steps=80, every=10, probes=("loss", "relative_change_layer", probes.every(30, "sharpness")),
                   snapshots=[0, 30, 80])
    kw = dict(grid={"lr": [0.05, 0.2]}, seeds=3, chunk=2, segment=2)
    whole = sweep.sweep(sim, **kw)
    calls, save_state = [], checkpoint.save_state

    def crash_on_the_seventh(*a, **k):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        save_state(*a, **k)

    monkeypatch.setattr(checkpoint, "save_state", crash_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        sweep.sweep(sim, **kw, checkpoint=tmp_path / "c")
    monkeypatch.setattr(checkpoint, "save_state", save_state)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # a writer killed mid-file leaves its temporary; the rerun removes it
    stray = tmp_path / "c" / "sweep" / "part-0" / f".chunk-1.state.npz.tmp-{dead.pid}"
    stray.write_bytes(b"half a file")
    _assert_identical(sweep.sweep(sim, **kw, checkpoint=tmp_path / "c"), whole)
    assert not stray.exists()
    # a checkpoint of another sweep is refused, naming the fix
    with pytest.raises(ConfigError, match="different sweep"):
        sweep.sweep(sim, grid={"lr": [0.05, 0.3]}, seeds=3, chunk=2, segment=2, checkpoint=tmp_path / "c")


def test_experiment_resume_flag(tmp_path, monkeypatch):
    from experiments import frequency_principle as fp
    out = tmp_path / "run"
    config = {**fp.PRESETS["quick"], "seeds": 1, "steps": 200, "every": 20}
    experiment.run(fp, config, out, progress=False)
    assert not (out / "checkpoint").exists()  # spent once results.nc is written
    first = sweep.load(out / "results.nc")
    summary = experiment.main(fp, ["--resume", str(out), "--no-progress"])
    assert summary["experiment"] == fp.NAME
    _assert_identical(sweep.load(out / "results.nc"), first)
    for argv, field in ((["--resume", str(tmp_path / "nowhere")], "config.json"),
                        (["--resume", str(out), "--set", "steps=5"], "drop --set")):
        with pytest.raises(SystemExit):
            experiment.main(fp, argv)


DIE_INSIDE_A_WRITE = """
import io, os, signal, sys
import numpy as np, xarray as xr
mode, n = sys.argv[1], int(sys.argv[2])
calls = []
if mode == "npz":  # the n-th checkpoint file gets half its bytes, then the process is killed
    savez = np.savez
    def half_then_kill(f, **arrays):
        calls.append(1)
        if len(calls) < n:
            return savez(f, **arrays)
        buf = io.BytesIO()
        savez(buf, **arrays)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    np.savez = half_then_kill
elif mode == "netcdf":  # results.nc gets half its bytes, then the process is killed
    to_netcdf = xr.Dataset.to_netcdf
    def half_then_kill(self, path, *a, **k):
        to_netcdf(self, path, *a, **k)
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    xr.Dataset.to_netcdf = half_then_kill
from engine import experiment
from experiments import frequency_principle
experiment.main(frequency_principle, sys.argv[3:])
"""


def test_a_sweep_killed_inside_a_write_loses_nothing_and_resumes_to_identical_results(tmp_path):
    """SIGKILL while a checkpoint file is half written, then while results.nc is half
    written: each time the last complete files are intact, the resume gives the results
    of an uninterrupted run bit for bit, and no temporary is left behind. A new run
    killed in the same folder leaves the previous run's files as they were."""
    from experiments import frequency_principle as fp
    script = tmp_path / "die.py"
    script.write_text(DIE_INSIDE_A_WRITE)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", ENGINE_CPU_DEVICES="0")  # one device, as in this process
    out = tmp_path / "run"
    fresh = ["--out", str(out), "--seeds", "1", "--set", "steps=200", "--no-progress"]

    def cli(mode, n, argv):
        return subprocess.run([sys.executable, str(script), mode, str(n), *argv], env=env,
                              capture_output=True, text=True, timeout=300)

    # 10 segments, each writes its records then the state: the 8th write is segment 4's state
    assert cli("npz", 8, fresh).returncode == -signal.SIGKILL
    part = out / "checkpoint" / "sweep" / "part-0"
    assert int(checkpoint.load_arrays(part / "chunk-0.state.npz")["extra_segment"]) == 3
    (half,) = part.glob(".chunk-0.state.npz.tmp-*")
    with pytest.raises(Exception):
        checkpoint.load_arrays(half)
    assert not (out / "results.nc").exists() and not (out / "config.json").exists()

    assert cli("netcdf", 0, ["--resume", str(out), "--no-progress"]).returncode == -signal.SIGKILL
    assert not (out / "results.nc").exists() and list(out.glob(".results.nc.tmp-*"))

    done = cli("none", 0, ["--resume", str(out), "--no-progress"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(out.rglob("*.tmp-*")) and not (out / "checkpoint").exists()
    config = {**experiment.parse_set(["steps=200"], fp.PRESETS["quick"]), "seeds": 1}
    experiment.run(fp, config, tmp_path / "uninterrupted", progress=False)
    _assert_identical(sweep.load(out / "results.nc"), sweep.load(tmp_path / "uninterrupted" / "results.nc"))

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = ["--out", str(out), "--seeds", "2", "--set", "steps=100", "--no-progress"]
    assert cli("npz", 3, other).returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
