"""Bad configs fail before anything is compiled, with a message naming the field and the fix."""
import contextlib
import os

import jax
import jax.monitoring
import numpy as np
import pytest

from engine import data, experiment, init, models, optim, probes, schedules, simulate, sweep
from engine.errors import ConfigError


@contextlib.contextmanager
def no_compilation():
    events = []
    listener = lambda name, *a, **k: events.append(name) if "backend_compile" in name else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not events, f"compiled before failing: {events}"


def two_layer(width=8, **kw):
    model = models.mlp((1, width, 1), "relu")
    return simulate.simulation(model, data.luo_points(), "mse", kw.pop("optimizer", optim.gd()),
                               init.luo(model), steps=kw.pop("steps", 20), every=kw.pop("every", 10), **kw)


def _npz_file(raw: bytes | None = None, **arrays) -> str:
    """A throwaway .npz (or a file of `raw` bytes) for the bad-data cases."""
    import tempfile
    fd, path = tempfile.mkstemp(suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        f.write(raw) if raw is not None else np.savez(f, **arrays)
    return path


CASES = {
    "unknown activation": ("activation", lambda: models.mlp((1, 4, 1), "rleu")),
    "zero width": ("widths[1]", lambda: models.mlp((1, 0, 1))),
    "one width": ("widths", lambda: models.mlp((3,))),
    "unknown optimizer": ("optimizer", lambda: optim.optimizer("adamm")),
    "unknown optimizer hyperparameter": ("optimizer.lrr", lambda: optim.adam(lrr=0.1)),
    "every > steps": ("every", lambda: two_layer(steps=10, every=20)),
    "zero steps": ("steps", lambda: two_layer(steps=0)),
    "accuracy on regression": ("probes", lambda: two_layer(probes=("loss", "accuracy"))),
    "test loss without test set": ("probes", lambda: two_layer(probes=("test_loss",))),
    "unknown probe": ("probes", lambda: two_layer(probes=("sharpnes",))),
    "duplicate probe": ("probes", lambda: two_layer(probes=("loss", "loss"))),
    "batch larger than data": ("batch_size", lambda: two_layer(batch_size=10)),
    "output width mismatch": ("model", lambda: simulate.simulation(
        models.mlp((1, 4, 2)), data.luo_points(), steps=10, every=5)),
    "luo on three layers": ("init", lambda: init.luo(models.mlp((1, 4, 4, 1)))),
    "odd antisymmetric width": ("widths", lambda: init.antisymmetric(
        models.mlp((1, 5, 1)), init.width_power(models.mlp((1, 5, 1))))),
    "unknown loss": ("loss", lambda: simulate.simulation(models.mlp((1, 4, 1)), data.luo_points(), "l2")),
    "empty grid values": ("grid['lr']", lambda: sweep.sweep(two_layer(), grid={"lr": []})),
    "unknown hyperparameter": ("lrr", lambda: sweep.sweep(two_layer(), grid={"lrr": [0.1]})),
    "negative learning rate": ("lr", lambda: sweep.sweep(two_layer(), grid={"lr": [0.1, -0.1]})),
    "beta outside [0, 1]": ("b1", lambda: sweep.sweep(two_layer(optimizer=optim.adam()), grid={"b1": [1.5]})),
    "string in a traced grid": ("grid['gamma']", lambda: sweep.sweep(two_layer(), grid={"gamma": ["big"]})),
    "zero seeds": ("seeds", lambda: sweep.sweep(two_layer(), seeds=0)),
    "static axis without builder": ("static", lambda: sweep.sweep(two_layer(), static={"width": [4, 8]})),
    "builder lacks the static argument": ("static['depth']", lambda: sweep.sweep(
        lambda width: two_layer(width), static={"depth": [1, 2]})),
    "unknown strategy": ("strategy", lambda: sweep.sweep(two_layer(), strategy="pmap")),
    "zero chunk": ("chunk", lambda: sweep.sweep(two_layer(), chunk=0)),
    "axis both static and traced": ("grid", lambda: sweep.sweep(
        lambda width: two_layer(width), grid={"gamma": [1.0]}, static={"gamma": [1.0]})),
    "memory budget too small": ("memory_budget_mb", lambda: sweep.sweep(two_layer(), memory_budget_mb=1e-4)),
    "--set without =": ("--set", lambda: experiment.parse_set(["steps500"], {"steps": 100})),
    "--set unknown key": ("--set", lambda: experiment.parse_set(["stpes=5"], {"steps": 100})),
    "--set wrong type": ("--set steps", lambda: experiment.parse_set(["steps=many"], {"steps": 100})),
    "--set scalar for list": ("--set widths", lambda: experiment.parse_set(["widths=5"], {"widths": [1, 2]})),
    "missing npz": ("path", lambda: data.from_npz("no/such/file.npz")),
    "unreadable npz": ("path", lambda: data.from_npz(_npz_file(b"not a zip"))),
    "npz without x_train": ("path", lambda: data.from_npz(_npz_file(x=np.zeros((4, 3)), y=np.zeros(4)))),
    "npz targets for other inputs": ("y_train", lambda: data.from_npz(_npz_file(x_train=np.zeros((4, 3)),
                                                                                y_train=np.zeros(3)))),
    "npz of strings": ("x_train", lambda: data.from_npz(_npz_file(x_train=np.array(["a", "b"]),
                                                                  y_train=np.array([0, 1])))),
    "npz with NaN": ("x_train", lambda: data.from_npz(_npz_file(x_train=np.full((2, 3), np.nan),
                                                                y_train=np.array([0, 1])))),
    "empty npz arrays": ("x_train", lambda: data.from_npz(_npz_file(x_train=np.zeros((0, 3)),
                                                                    y_train=np.zeros(0)))),
    "step size fraction above 1": ("probes.fraction", lambda: probes.step_size(fraction=2.0)),
    "two probes setting the learning rate": ("probes", lambda: two_layer(
        probes=("loss", probes.step_size(), probes.step_size(fraction=0.2)))),
    "neuron weights of a bad layer name": ("probes.name", lambda: probes.neuron_weights("0", name="two words")),
    "preconditioned probe with plain GD": ("probes", lambda: two_layer(probes=("preconditioned_sharpness",))),
    "preconditioned curvature with momentum": ("probes", lambda: two_layer(
        optimizer=optim.momentum(), probes=("preconditioned_directional_curvature",))),
    "sharpness with more eigenvalues than iterations": ("probes.iters", lambda: two_layer(
        probes=(probes.sharpness(k=5, iters=3),))),
    "unknown eigen-solver": ("probes.method", lambda: probes.sharpness(method="arpack")),
    "a cap on products below the budget": ("probes.max_iters", lambda: probes.sharpness(iters=20, max_iters=10)),
    "a warm cap below the warm budget": ("probes.max_warm_iters", lambda: probes.hessian_extremes(
        warm_iters=10, max_warm_iters=5)),
    "power iteration with the default tolerance": ("probes.tol", lambda: probes.sharpness(method="power")),
    "stability threshold of lion": ("optimizer", lambda: optim.stability_threshold(optim.lion(), {})),
    # what a new user tripped over: each gets its own line, not "outputs 1 values but the targets have 20"
    "1-D inputs": ("data.x", lambda: simulate.simulation(
        models.mlp((1, 4, 1)), data.Dataset(np.zeros(20, np.float32), np.zeros((20, 1), np.float32)))),
    "1-D targets": ("data.y", lambda: simulate.simulation(
        models.mlp((1, 4, 1)), data.Dataset(np.zeros((20, 1), np.float32), np.zeros(20, np.float32)))),
    "integer class labels": ("data.y", lambda: simulate.simulation(
        models.mlp((1, 4, 3)), data.Dataset(np.zeros((20, 1), np.float32), np.zeros((20, 1), np.int32)),
        "cross_entropy")),
    "two features into a one-input model": ("data.x", lambda: simulate.simulation(
        models.mlp((1, 4, 1)), data.Dataset(np.zeros((20, 2), np.float32), np.zeros((20, 1), np.float32)))),
    "unknown schedule": ("schedule", lambda: schedules.schedule("cosine")),
    "unknown decay shape": ("schedule.shape", lambda: schedules.wsd(shape="exponential")),
    "a schedule that is not one": ("schedule", lambda: optim.adam(schedule="warmup")),
    "warmup longer than the run": ("warmup_steps", lambda: two_layer(
        steps=20, optimizer=optim.gd(schedule=schedules.warmup(100)))),
    "swept warmup longer than the run": ("warmup_steps", lambda: sweep.sweep(
        two_layer(steps=20, optimizer=optim.gd(schedule=schedules.warmup(10))), grid={"warmup_steps": [10, 50]})),
    "final fraction above 1": ("final_lr_fraction", lambda: optim.gd(schedule=schedules.wsd(final_lr_fraction=2.0))),
    "step size under a schedule": ("probes", lambda: two_layer(
        optimizer=optim.gd(schedule=schedules.warmup(10)), probes=("loss", probes.step_size()))),
    "negative weight decay": ("weight_decay", lambda: optim.gd(weight_decay=-0.1)),
    "unknown matmul precision": ("probes.precision", lambda: probes.with_precision(probes.sharpness(), "fp32")),
    "batch curvature under full-batch training": ("probes", lambda: two_layer(probes=("loss", "batch_sharpness"))),
    "gradient noise under full-batch training": ("probes", lambda: two_layer(probes=("loss", "gradient_noise"))),
    "one batch for a standard error": ("probes.batches", lambda: probes.batch_sharpness(batches=1)),
    "dropout of one": ("dropout", lambda: two_layer(dropout=1.0)),
    "swept dropout outside [0, 1)": ("dropout", lambda: sweep.sweep(two_layer(dropout=0.1), grid={"dropout": [0.1, 1.5]})),
    "dropout on a model without it": ("dropout", lambda: simulate.simulation(
        models.scalar(), data.luo_points(), "mse", dropout=0.1)),
    "a dropout mask without dropout": ("probes", lambda: two_layer(probes=(probes.with_dropout_mask(probes.trace()),))),
    "output scale zero": ("output_scale", lambda: two_layer(output_scale=0.0)),
    "swept negative output scale": ("output_scale", lambda: sweep.sweep(
        two_layer(output_scale=1.0), grid={"output_scale": [1.0, -2.0]})),
    "a cadence that is not a multiple of every": ("probes", lambda: two_layer(
        every=10, probes=("loss", probes.every(15, "sharpness")))),
    "a step size at its own cadence": ("probes.every", lambda: probes.every(20, probes.step_size())),
    "a snapshot between records": ("snapshots", lambda: two_layer(every=10, snapshots=[0, 15])),
    "full batch as a static axis": ("static['batch_size']", lambda: sweep.sweep(
        lambda batch_size: two_layer(batch_size=batch_size), static={"batch_size": [2, None]})),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_gives_a_clear_error_before_compiling(case):
    field, make = CASES[case]
    with no_compilation(), pytest.raises(ConfigError) as err:
        make()
    message = str(err.value)
    assert message.startswith(f"{field}:"), message
    assert "Fix:" in message and len(message) < 400, message


def test_cli_errors_are_one_line_not_a_traceback(capsys, tmp_path):
    from experiments import quickstart
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as code:
        experiment.main(quickstart, ["--set", "widths=[3, 5]", "--out", str(out), "--no-progress"])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: widths:") and "Traceback" not in err
    assert not out.exists()  # nothing is left behind by a config that never ran
