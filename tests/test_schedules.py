"""Learning-rate schedules: traced numbers, optax's shapes, one compiled program per sweep."""
import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine import data, init, models, optim, schedules, simulate, sweep

T = np.arange(0, 301)


def factor(schedule, **values):
    """s(t) of `schedule` at every t of T, with its hyperparameters traced (under jit)."""
    hp = {**schedule.defaults, **values}
    return np.asarray(jax.jit(jax.vmap(lambda t, hp: schedule.factor(t, **hp), (0, None)))(jnp.asarray(T), hp))


def reference(fn):
    return np.array([float(fn(t)) for t in T])


@pytest.mark.parametrize("warmup_steps", [0, 1, 37, 300])
def test_warmup_is_optax_linear_schedule(warmup_steps):
    ref = reference(optax.linear_schedule(0.0, 1.0, warmup_steps)) if warmup_steps else np.ones(T.size)
    np.testing.assert_allclose(factor(schedules.warmup(), warmup_steps=warmup_steps), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("warmup_steps, decay_steps, final", [(0, 200, 0.0), (20, 200, 0.1), (50, 300, 0.5)])
def test_warmup_cosine_is_optax_warmup_cosine_decay(warmup_steps, decay_steps, final):
    ref = reference(optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, decay_steps, final))
    got = factor(schedules.warmup_cosine(), warmup_steps=warmup_steps, decay_steps=decay_steps,
                 final_lr_fraction=final)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_wsd_is_optax_warmup_then_constant_then_decay(shape):
    w, start, length, f = 30, 150, 100, 0.1
    decay = (optax.linear_schedule(1.0, f, length) if shape == "linear"
             else optax.cosine_decay_schedule(1.0, length, alpha=f))
    ref = reference(optax.join_schedules([optax.linear_schedule(0.0, 1.0, w), optax.constant_schedule(1.0), decay],
                                         [w, start]))
    got = factor(schedules.wsd(shape=shape), warmup_steps=w, decay_start=start, decay_steps=length,
                 final_lr_fraction=f)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape, middle", [("linear", 1 - 0.9 * 0.5), ("cosine", 0.1 + 0.9 * 0.5),
                                           ("1-sqrt", 1 - 0.9 * 0.5 ** 0.5)])
def test_wsd_at_its_breakpoints(shape, middle):
    """0 at t = 0, half-way at half the warmup, the peak through the stable phase, the
    shape's value half-way through the decay, the final fraction at its end and after."""
    s = factor(schedules.wsd(shape=shape), warmup_steps=40, decay_start=200, decay_steps=80, final_lr_fraction=0.1)
    assert s[0] == 0 and s[20] == pytest.approx(0.5) and s[40] == 1 and s[120] == 1 and s[200] == 1
    assert s[240] == pytest.approx(middle, rel=1e-6)
    assert s[280] == pytest.approx(0.1, rel=1e-6) and s[300] == pytest.approx(0.1, rel=1e-6)


def test_step_decay_is_optax_staircase_exponential_decay():
    ref = reference(optax.exponential_decay(1.0, 70, 0.5, staircase=True))
    np.testing.assert_allclose(factor(schedules.step_decay(), decay_every=70, decay_factor=0.5), ref, rtol=1e-6)


def _sim(schedule, steps=60, every=10, optimizer=optim.gd):
    model = models.mlp((1, 16, 1), "tanh")
    return simulate.simulation(model, data.chebyshev(3, 20), "mse", optimizer(lr=0.1, schedule=schedule),
                               init.scaled(model), steps=steps, every=every, probes=("loss",))


@pytest.mark.parametrize("name", ["gd", "momentum"])
def test_a_scheduled_run_is_optax_with_that_schedule(name):
    """In float64, the loss trajectory under warmup-cosine equals optax's optimizer driven
    by optax's own schedule to 1e-9, and the recorded rate is lr * s(t). (optax divides
    its int32 count in float32; the reference casts it, as our schedules do.)"""
    with jax.enable_x64(True):
        sim = _sim(schedules.warmup_cosine(decay_steps=50.0), steps=60, every=1, optimizer=getattr(optim, name))
        hp = {"lr": 0.05, "warmup_steps": 10.0, "decay_steps": 50.0, "final_lr_fraction": 0.1}
        traj = jax.jit(sim.run)(jax.random.key(0), hp)
        model, d = models.mlp((1, 16, 1), "tanh"), data.chebyshev(3, 20)
        params = init.scaled(model).sample(jax.random.split(jax.random.key(0))[0], {"init_scale": 1.0})
        rate = optax.warmup_cosine_decay_schedule(0.0, 0.05, 10, 50, 0.005)
        tx = optax.sgd(lambda count: rate(count.astype(jnp.float64)), momentum=0.9 if name == "momentum" else None)
        state, loss = tx.init(params), lambda p: 0.5 * jnp.mean(jnp.sum((model.apply(p, d.x) - d.y) ** 2, -1))
        expected = []
        for _ in range(61):
            expected.append(loss(params))
            u, state = tx.update(jax.grad(loss)(params), state, params)
            params = optax.apply_updates(params, u)
        assert float(expected[-1]) < 0.9 * float(expected[0])  # it trains
        expected_rate = [float(rate(jnp.float64(t))) for t in range(61)]
    np.testing.assert_allclose(traj["loss"], expected, rtol=1e-9)
    np.testing.assert_allclose(traj["scheduled_lr"], expected_rate, rtol=1e-12, atol=1e-15)


def test_a_sweep_over_warmup_and_peak_rate_is_one_program_recording_each_runs_rate():
    """3 warmup lengths x 2 peak rates x 2 seeds run as one program: a second sweep over
    other warmup lengths and rates of the same shape compiles nothing (the schedule's
    numbers are traced, not baked in). Each run's recorded rate is its peak rate times
    optax's schedule at that step."""
    sim = _sim(schedules.warmup_cosine(decay_steps=60.0, final_lr_fraction=0.2))
    ds = sweep.sweep(sim, grid={"warmup_steps": [0.0, 10.0, 40.0], "lr": [0.05, 0.1]}, seeds=2, progress=False)
    events = []
    listener = lambda name, *a, **k: events.append(name) if "backend_compile" in name else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        other = sweep.sweep(sim, grid={"warmup_steps": [5.0, 20.0, 50.0], "lr": [0.02, 0.2]}, seeds=2, progress=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not events, events
    for result in (ds, other):
        for w in result.warmup_steps.values:
            ref = optax.warmup_cosine_decay_schedule(0.0, 1.0, int(w), 60, 0.2)
            for lr in result.lr.values:
                expected = [lr * float(ref(t)) for t in result.step.values]
                got = result.scheduled_lr.sel(warmup_steps=w, lr=lr).values
                np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), rtol=1e-6, atol=1e-9)
        assert np.isfinite(result.loss).all()
    # warmup changes the run: longer warmup, slower start
    early = ds.loss.sel(step=10, lr=0.1).median("seed")
    assert float(early.sel(warmup_steps=0.0)) < float(early.sel(warmup_steps=40.0))


def test_a_constant_schedule_is_no_schedule_bit_for_bit():
    """s(t) = 1 multiplies each update exactly: the run is the unscheduled run."""
    plain = jax.jit(_sim(None).run)(jax.random.key(1), {"lr": 0.1})
    constant = jax.jit(_sim(schedules.constant()).run)(jax.random.key(1), {"lr": 0.1})
    np.testing.assert_array_equal(constant["loss"], plain["loss"])
    np.testing.assert_array_equal(constant["scheduled_lr"], np.full(plain["loss"].shape, 0.1, np.float32))
