"""Property-based tests (hypothesis) over random small configs: every valid one runs and
gives finite or flagged records; every invalid one fails with a ConfigError naming a
field and a fix, before anything compiles. The same over experiments' command lines:
any one thing wrong gives one line naming it, no traceback, no compilation, no folder."""
import contextlib
import importlib
import io
import pkgutil
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import experiments
from engine import data, experiment, init, models, optim, simulate, sweep
from engine.errors import ConfigError, Range
from tests.test_config_errors import no_compilation

ACTIVATIONS = ["relu", "tanh", "gelu", "silu", "xtanh", "linear"]
OPTIMIZERS = ["gd", "momentum", "adam", "rmsprop"]
PROBES = ["loss", "param_norm", "grad_norm", "relative_change", "relative_change_layer", "prediction"]
SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw):
    steps = draw(st.integers(1, 30))
    return {"hidden": draw(st.lists(st.integers(1, 8), min_size=1, max_size=3)),
            "activation": draw(st.sampled_from(ACTIVATIONS)), "optimizer": draw(st.sampled_from(OPTIMIZERS)),
            "lr": draw(st.floats(1e-4, 0.5)), "steps": steps, "every": draw(st.integers(1, steps)),
            "probes": draw(st.lists(st.sampled_from(PROBES), min_size=1, max_size=3, unique=True)),
            "seeds": draw(st.integers(1, 3)), "init_scale": draw(st.floats(1e-3, 3.0))}


def run(c):
    model = models.mlp((1, *c["hidden"], 1), c["activation"])
    sim = simulate.simulation(model, data.luo_points(), "mse", optim.optimizer(c["optimizer"], lr=c["lr"]),
                              init.scaled(model), steps=c["steps"], every=c["every"], probes=tuple(c["probes"]))
    return sweep.sweep(sim, grid={"init_scale": [c["init_scale"]]}, seeds=c["seeds"], progress=False)


@SETTINGS
@given(configs())
def test_any_valid_config_runs(c):
    ds = run(c)
    steps = np.unique(np.minimum(np.arange(0, c["steps"] + c["every"], c["every"]), c["steps"]))
    np.testing.assert_array_equal(ds.step.values, steps)
    assert ds.sizes["seed"] == c["seeds"] and set(c["probes"]) <= set(ds.data_vars)
    loss_like = [v for v in ("param_norm", "relative_change") if v in ds]
    for name in loss_like:  # finite, or NaN only after the run was flagged as diverged
        ok = np.isfinite(ds[name]) | ds.diverged
        assert bool(ok.all()), name


BREAKS = {  # field the error must name -> how to break a valid config
    "widths[1]": lambda c: {**c, "hidden": [0] + c["hidden"][1:]},
    "activation": lambda c: {**c, "activation": c["activation"] + "x"},
    "optimizer": lambda c: {**c, "optimizer": "sgdd"},
    "lr": lambda c: {**c, "lr": -c["lr"]},
    "steps": lambda c: {**c, "steps": 0, "every": 1},
    "every": lambda c: {**c, "every": c["steps"] + 1},
    "probes": lambda c: {**c, "probes": c["probes"] + ["sharpnes"]},
    "seeds": lambda c: {**c, "seeds": 0},
    "grid['init_scale']": lambda c: {**c, "init_scale": float("nan")},
}


@SETTINGS
@given(configs(), st.sampled_from(sorted(BREAKS)))
def test_any_broken_config_fails_cleanly_before_compiling(c, field):
    with no_compilation(), pytest.raises(ConfigError) as err:
        run(BREAKS[field](c))
    message = str(err.value)
    assert message.split(":")[0] in (field, "init_scale"), message
    assert "Fix:" in message and "Traceback" not in message


# ----------------------------------------------------------------------------- the command line
EXPERIMENTS = {m.name: importlib.import_module(f"experiments.{m.name}")
               for m in pkgutil.iter_modules(experiments.__path__)}
NAME = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)


def _bounded(allowed: Range) -> bool:
    return allowed.lo is not None or allowed.hi is not None


@st.composite
def broken_invocations(draw):
    """(module, argv, the field the error must name): one thing wrong, as a user types it."""
    module = EXPERIMENTS[draw(st.sampled_from(sorted(EXPERIMENTS)))]
    preset = module.PRESETS["quick"]
    numbers = sorted(k for k, v in preset.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    lists = sorted(k for k, v in preset.items() if isinstance(v, list))
    ranged = sorted(k for k, r in getattr(module, "RANGES", {}).items() if _bounded(r))
    kind = draw(st.sampled_from(["range", "count", "empty", "type", "key", "equals", "preset", "seeds", "resume"]))
    if kind == "range" and ranged:
        key = draw(st.sampled_from(ranged))
        allowed = module.RANGES[key]
        bad = draw(st.floats(-1e6, 1e6).filter(lambda v: v not in allowed))
        value = list(preset[key]) if isinstance(preset[key], list) else bad
        if isinstance(value, list):
            value[draw(st.integers(0, len(value) - 1))] = bad
        return module, ["--set", f"{key}={value!r}"], key
    if kind == "count" and any(isinstance(preset[k], int) for k in numbers):
        key = draw(st.sampled_from([k for k in numbers if isinstance(preset[k], int)]))
        return module, ["--set", f"{key}={draw(st.integers(-100, 0))}"], key
    if kind == "empty" and lists:
        key = draw(st.sampled_from(lists))
        return module, ["--set", f"{key}=[]"], key
    if kind == "type" and numbers:
        key = draw(st.sampled_from(numbers))
        return module, ["--set", f"{key}={draw(NAME)}"], key
    if kind == "equals":
        return module, ["--set", draw(NAME)], "--set"
    if kind == "preset":
        return module, ["--preset", draw(NAME.filter(lambda p: p not in module.PRESETS))], "--preset"
    if kind == "seeds":
        return module, ["--seeds", str(draw(st.integers(-5, 0)))], "--seeds"
    if kind == "resume":
        return module, ["--resume", f"nowhere/{draw(NAME)}"], "--resume"
    return module, ["--set", f"{draw(NAME.filter(lambda k: k not in preset))}=1"], "--set"


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(broken_invocations())
def test_any_broken_command_line_fails_in_one_clear_line_before_compiling(invocation):
    module, argv, field = invocation
    stderr = io.StringIO()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        with no_compilation(), contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as code:
            experiment.main(module, [*argv, "--out", str(out), "--no-progress"])
        created = out.exists()
    message = stderr.getvalue().strip()
    assert code.value.code == 2, message
    assert message.startswith("error: ") and "\n" not in message and "Fix:" in message, message
    assert field in message[len("error: "):].split(": ")[0], message
    assert not created


class ReachedTheSweep(Exception):
    pass


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_value_in_range_reaches_the_sweep_or_fails_cleanly(data):
    """A value inside a field's RANGES never crashes an experiment: it either passes every
    check (and the sweep starts) or a module-specific check rejects it with a ConfigError."""
    module = EXPERIMENTS[data.draw(st.sampled_from(sorted(n for n, m in EXPERIMENTS.items() if hasattr(m, "RANGES"))))]
    key = data.draw(st.sampled_from(sorted(module.RANGES)))
    allowed, old = module.RANGES[key], module.PRESETS["quick"][key]
    lo = allowed.lo if allowed.lo is not None else -1e3
    hi = allowed.hi if allowed.hi is not None else lo + 1e3
    draw = (st.integers(int(np.ceil(lo)), int(hi)) if allowed.integer else st.floats(lo, hi))
    v = data.draw(draw.filter(lambda v: v in allowed))
    value = [v, *old[1:]] if isinstance(old, list) else v
    config = {**module.PRESETS["quick"], key: value}
    with mock.patch.object(sweep, "_run_all", side_effect=ReachedTheSweep), tempfile.TemporaryDirectory() as folder:
        try:
            experiment.run(module, config, Path(folder) / "out", progress=False)
        except ReachedTheSweep:
            event("reached the sweep")
        except ConfigError as e:
            event(f"rejected by the module: {e.field}")
