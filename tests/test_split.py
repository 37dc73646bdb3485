"""A training split drawn per run: `data.ranked` / `modular_ranked` with
`simulation(train_fraction=f)`, so that a sweep over training fractions is one program
(issue 16: weight decay x training fraction x seeds in one program)."""
import jax
import numpy as np
import pytest

from engine import data, models, optim, probes, simulate, sweep
from engine.errors import ConfigError

P = 11
PROBES = ("loss", "accuracy", "test_loss", "test_accuracy", "softmax_collapse", "logit_norm", "sharpness")


def _sim(d, **kw):
    model = models.mlp((2 * P, 32, P), "relu")
    return simulate.simulation(model, d, "cross_entropy", optim.adamw(lr=3e-3, b1=0.9, b2=0.98), steps=40,
                               every=10, probes=PROBES, **kw)


def test_a_traced_fraction_trains_on_the_static_split_of_that_fraction():
    """Each run of one sweep over fractions x weight decays equals, to float32 rounding
    of the summation order, the sweep on `modular(p, op, f, seed)`'s static split: the
    same training pairs, the same test pairs, every probe (sharpness included: the
    Hessian is that of the weighted training loss). A second sweep over other fractions
    compiles nothing."""
    ranked = _sim(data.modular_ranked(P, "+", seed=4), train_fraction=0.5)
    grid = {"train_fraction": [0.3, 0.6], "weight_decay": [0.1, 1.0]}
    ds = sweep.sweep(ranked, grid=grid, seeds=2, progress=False)
    for f in grid["train_fraction"]:
        static = sweep.sweep(_sim(data.modular(P, "+", f, 4)), grid={"weight_decay": grid["weight_decay"]},
                             seeds=2, progress=False)
        for v in PROBES:
            got = ds[v].sel(train_fraction=f).transpose(*static[v].dims).values
            np.testing.assert_allclose(got, static[v].values, rtol=2e-5, atol=2e-6, err_msg=f"{v} at f={f}")
    assert not np.allclose(ds.test_accuracy.sel(train_fraction=0.3), ds.test_accuracy.sel(train_fraction=0.6))
    events = []
    listener = lambda name, *a, **k: events.append(name) if "backend_compile" in name else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        sweep.sweep(ranked, grid={"train_fraction": [0.2, 0.8], "weight_decay": [0.3, 3.0]}, seeds=2, progress=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not events, events


def test_the_split_is_nested_disjoint_and_counted_by_floor():
    """Training sets of larger fractions contain those of smaller ones; train and test
    weights are complementary; floor(f n) examples train, as in `modular_table`."""
    d = data.modular_ranked(P, "*", seed=2)
    n = d.n
    w = {f: np.asarray(simulate.train_weights(d, f)) for f in (0.1, 0.29, 0.5, 0.9)}
    for f, wf in w.items():
        assert wf.sum() == int(np.floor(f * n + 1e-3)) == data.modular_table(P, "*", f, 2).train.sum()
        assert set(np.flatnonzero(wf)) == set(np.flatnonzero(data.modular_table(P, "*", f, 2).train))
    assert np.all(w[0.1] <= w[0.29]) and np.all(w[0.29] <= w[0.5]) and np.all(w[0.5] <= w[0.9])


@pytest.mark.parametrize("make, field", [
    (lambda: _sim(data.modular_ranked(P)), "train_fraction"),                   # ranked, no fraction
    (lambda: _sim(data.modular(P, "+", 0.5), train_fraction=0.5), "train_fraction"),  # fraction, no rank
    (lambda: _sim(data.modular_ranked(P), train_fraction=1.0), "train_fraction"),
    (lambda: _sim(data.modular_ranked(P), train_fraction=0.5, batch_size=16), "batch_size"),
    (lambda: data.ranked(np.zeros((4, 2)), np.zeros((4, 1)), seed=-1), "seed"),
])
def test_bad_split_settings_are_refused_before_compiling(make, field):
    with pytest.raises(ConfigError) as e:
        make()
    assert e.value.field == field


def test_a_probe_on_a_subset_of_the_examples_is_refused_under_a_drawn_split():
    sim = simulate.simulation(models.mlp((2 * P, 8, P), "relu"), data.modular_ranked(P), "cross_entropy",
                              steps=10, every=10, probes=("loss", probes.sharpness(examples=20)), train_fraction=0.5)
    with pytest.raises(ConfigError, match="examples"):
        sweep.sweep(sim, seeds=1, progress=False)
