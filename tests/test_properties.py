"""Property-based tests (hypothesis) over random small configs: every valid one runs and
gives finite or flagged records; every invalid one fails with a ConfigError naming a
field and a fix, before anything compiles."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import data, init, models, optim, simulate, sweep
from engine.errors import ConfigError
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
