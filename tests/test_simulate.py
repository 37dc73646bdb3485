import jax
import jax.numpy as jnp
import numpy as np
import optax

from engine import data, init, losses, models, optim, probes, simulate


def test_records_at_zero_every_and_last_step_match_a_hand_loop(tiny_sim):
    sim = tiny_sim(steps=50, every=20, probes=("loss", "param_norm", "grad_norm", "relative_change"))
    np.testing.assert_array_equal(sim.record_steps, [0, 20, 40, 50])
    traj = jax.jit(sim.run)(jax.random.key(0), {"gamma": 0.5})
    # The same run written by hand with optax.
    model = models.mlp((1, 32, 1), "relu")
    d = data.luo_points()
    params = init.luo(model).sample(jax.random.split(jax.random.key(0))[0], {"gamma": 0.5, "gamma_prime": 0.0})
    p0, tx = params, optax.sgd(0.1)
    state = tx.init(params)
    loss = lambda p: 0.5 * jnp.mean(jnp.sum((model.apply(p, d.x) - d.y) ** 2, -1))
    expected = {}
    for t in range(51):
        if t in (0, 20, 40, 50):
            expected[t] = (loss(params), probes.norm(params), probes.norm(jax.grad(loss)(params)),
                           probes.relative_change(params, p0))
        u, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, u)
    for j, t in enumerate(sim.record_steps):
        got = [traj[k][j] for k in ("loss", "param_norm", "grad_norm", "relative_change")]
        np.testing.assert_allclose(got, expected[int(t)], rtol=2e-5, atol=1e-8)
    assert not traj["diverged"] and int(traj["diverged_step"]) == -1


def test_divergence_freezes_flags_and_nans_later_records(tiny_sim):
    model = models.mlp((1, 32, 1), "relu")
    sim = simulate.simulation(model, data.luo_points(), "mse", optim.gd(lr=200.0), init.luo(model),
                              steps=200, every=10, probes=("loss", "param_norm"), diverge_above=1e6)
    traj = jax.jit(sim.run)(jax.random.key(0), {"gamma": 0.2})
    assert bool(traj["diverged"])
    t_d = int(traj["diverged_step"])
    steps = sim.record_steps
    assert 0 < t_d < 200
    assert np.all(np.isfinite(traj["loss"][steps <= t_d]))
    assert np.all(np.isnan(traj["loss"][steps > t_d]))


def test_convergence_freezes_the_run(tiny_sim):
    sim = tiny_sim(steps=2000, every=100, probes=("loss", "relative_change"), converge_below=1e-4)
    traj = jax.jit(sim.run)(jax.random.key(1), {"gamma": 0.5})
    assert bool(traj["converged"])
    t_c = int(traj["converged_step"])
    after = sim.record_steps > t_c
    assert after.any() and np.all(traj["loss"][after] < 1e-4)
    assert np.ptp(np.asarray(traj["relative_change"][after])) == 0.0  # frozen


def test_minibatch_sgd_is_deterministic_per_key():
    model = models.mlp((64, 16, 10), "tanh")
    sim = simulate.simulation(model, data.digits(n_train=200), "cross_entropy", optim.gd(lr=0.1),
                              steps=30, every=10, probes=("loss", "accuracy"), batch_size=32)
    run = jax.jit(sim.run)
    a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    np.testing.assert_array_equal(a["loss"], b["loss"])
    assert not np.allclose(a["loss"][1:], c["loss"][1:])
    assert float(a["loss"][-1]) < float(a["loss"][0])


def test_per_layer_relative_change(tiny_sim):
    sim = tiny_sim(steps=40, every=40, probes=("relative_change_layer",))
    state, _ = sim.init(jax.random.key(0), {"gamma": 0.5}, sim.data)
    state, recs = sim.advance(state, sim.data, 1)
    params0 = state.probe_state["relative_change_layer"]  # theta_0, kept by the probe that needs it
    expected = [probes.relative_change(p, p0) for p, p0 in zip(state.params, params0)]
    np.testing.assert_allclose(recs["relative_change_layer"][-1], expected, rtol=1e-6)
    assert sim.probe_coords["layer"] == ["0", "1"]


def test_probe_order_does_not_change_any_record(tiny_sim):
    """Probes compose like optax transformations: permuted, with the step-size probe first,
    in the middle or last, every record is bit for bit the same (the step-size probe sets
    the next interval's lr before any other probe measures, wherever it is listed)."""
    chosen = ["loss", "grad_norm", "loss_change", "relative_change", probes.step_size(0.5),
              probes.sharpness(iters=10), "param_norm"]
    orders = [chosen, chosen[::-1], chosen[4:] + chosen[:4]]
    trajs = [jax.jit(tiny_sim(steps=60, every=10, probes=tuple(order)).run)(jax.random.key(3), {"gamma": 0.5})
             for order in orders]
    assert set(trajs[0]) == set(trajs[1]) == set(trajs[2])
    assert float(np.ptp(trajs[0]["lr"])) > 0  # the step size did change between intervals
    for traj in trajs[1:]:
        for name in trajs[0]:
            np.testing.assert_array_equal(traj[name], trajs[0][name], err_msg=name)


def test_coupled_l2_is_in_the_loss_its_gradient_and_the_hessian_the_probes_see():
    """optim.gd(l2=c): the run minimizes L + c/2 ||theta||^2. In float64 its trajectory is
    optax's sgd on that gradient (add_decayed_weights(c) before it), the recorded loss
    is the data loss, and the recorded sharpness is the top eigenvalue of the dense
    Hessian of the penalized loss (H + c I), to 1e-6."""
    from jax.flatten_util import ravel_pytree
    with jax.enable_x64(True):
        model, d = models.mlp((1, 8, 1), "tanh"), data.chebyshev(3, 20)
        sim = simulate.simulation(model, d, "mse", optim.gd(lr=0.1, l2=0.0), init.scaled(model), steps=20,
                                  every=10, probes=("loss", probes.sharpness(iters=25, warm_iters=25)))
        hp = {"l2": 0.3}
        state, rec0 = sim.init(jax.random.key(0), hp, sim.data)
        state, recs = sim.advance(state, sim.data, 2)
        data_loss = lambda p: 0.5 * jnp.mean(jnp.sum((model.apply(p, d.x) - d.y) ** 2, -1))
        penalized = lambda p: data_loss(p) + 0.15 * sum(jnp.sum(x * x) for x in jax.tree.leaves(p))
        params = init.scaled(model).sample(jax.random.split(jax.random.key(0))[0], {"init_scale": 1.0})
        tx = optax.chain(optax.add_decayed_weights(0.3), optax.sgd(0.1))
        opt_state = tx.init(params)
        for _ in range(20):
            u, opt_state = tx.update(jax.grad(data_loss)(params), opt_state, params)
            params = optax.apply_updates(params, u)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), state.params, params)
        np.testing.assert_allclose(recs["loss"][-1], data_loss(params), rtol=1e-10)
        flat, unravel = ravel_pytree(params)
        top = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: penalized(unravel(f)))(flat)))[-1]
        np.testing.assert_allclose(recs["sharpness"][-1], top, rtol=1e-6)


def test_a_probe_at_its_own_cadence_is_measured_only_there_and_changes_nothing_else():
    """every(40, sharpness) beside the loss at every=10: the loss is the same bit for bit,
    the sharpness is NaN between its measurements and, where measured (steps 0, 40, 80),
    agrees with the sharpness taken at every record to 1e-3 (its warm start comes from
    40 steps back instead of 10)."""
    model, d = models.mlp((1, 16, 1), "tanh"), data.chebyshev(3, 20)
    make = lambda sharp: simulate.simulation(model, d, "mse", optim.gd(lr=0.3), steps=90, every=10,
                                             probes=("loss", sharp))
    sparse, dense = (jax.jit(make(p).run)(jax.random.key(0)) for p in (probes.every(40, "sharpness"), "sharpness"))
    np.testing.assert_array_equal(sparse["loss"], dense["loss"])
    measured = np.isin(np.arange(0, 100, 10), [0, 40, 80])
    assert np.all(np.isnan(sparse["sharpness"][~measured])) and np.all(np.isnan(sparse["eigen_residual"][~measured]))
    np.testing.assert_allclose(sparse["sharpness"][measured], dense["sharpness"][measured], rtol=1e-3)


def test_parameter_snapshots_are_theta_at_their_steps_and_are_saved_beside_the_results(tmp_path):
    """snapshots=[0, 20, 60]: each row is theta_t of the run (the recorded loss of the
    unravelled row is the loss recorded at t, and the last row is the final state's
    theta, bit for bit); a sweep saves them to NAME.snapshots.nc and load joins them."""
    from engine import sweep
    model, d = models.mlp((1, 8, 1), "tanh"), data.chebyshev(3, 20)
    sim = simulate.simulation(model, d, "mse", optim.gd(lr=0.2), steps=60, every=10, probes=("loss",),
                              snapshots=[60, 0, 20])
    state, rec0 = sim.init(jax.random.key(0), {}, sim.data)
    state, recs = sim.advance(state, sim.data, sim.intervals)
    snaps = np.asarray(state.snapshots)
    np.testing.assert_array_equal(snaps[-1], np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)]))
    loss_at = lambda row: losses.mse(model.apply(sim.unravel(row), d.x), d.y)
    np.testing.assert_allclose([loss_at(snaps[0]), loss_at(snaps[1])], [rec0["loss"], recs["loss"][1]], rtol=1e-6)
    ds = sweep.sweep(sim, grid={"lr": [0.1, 0.2]}, seeds=2)
    assert ds.params_snapshot.dims == ("seed", "lr", "snapshot_step", "parameter")
    assert list(ds.snapshot_step.values) == [0, 20, 60]
    sweep.save(ds, tmp_path / "r.nc")
    assert (tmp_path / "r.snapshots.nc").exists()
    np.testing.assert_array_equal(sweep.load(tmp_path / "r.nc").params_snapshot, ds.params_snapshot)
