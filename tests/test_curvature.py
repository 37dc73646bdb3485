"""Curvature against the dense Hessian (jax.hessian + eigh) on small MLPs, in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from engine import curvature, data, init, losses, models, optim, probes, simulate, sweep


def problem(widths=(3, 12, 12, 2), n=24, seed=0, scale=1.5):
    """loss_fn(params), params, and the dense Hessian of the flattened loss."""
    model = models.mlp(widths, "tanh")
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = jax.tree.map(lambda p: scale * p + 0.1, model.init(kp))
    x = jax.random.normal(kx, (n, widths[0]))
    y = jax.random.normal(ky, (n, widths[-1]))
    loss_fn = lambda p: losses.mse(model.apply(p, x), y)
    flat, unravel = ravel_pytree(params)
    H = jax.hessian(lambda f: loss_fn(unravel(f)))(flat)
    return loss_fn, params, H


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_hvp_both_modes_equal_the_dense_hessian(x64):
    loss_fn, params, H = problem()
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(5), flat.shape)
    for mode in curvature.HVP_MODES:
        Hv = ravel_pytree(curvature.hvp(loss_fn, params, unravel(v), mode))[0]
        np.testing.assert_allclose(Hv, H @ v, rtol=1e-10, atol=1e-12)


def test_lanczos_top3_after_30_iterations_matches_dense(x64):
    loss_fn, params, H = problem()
    dense = np.linalg.eigvalsh(np.asarray(H))[::-1][:3]
    eig = jax.jit(lambda p: curvature.top_eigenvalues(loss_fn, p, jax.random.key(1), k=3, iters=30))(params)
    assert H.shape[0] > 200
    np.testing.assert_allclose(eig.values, dense, rtol=1e-6)
    # The reported residual is the true ||Hv - lambda v|| / |lambda|.
    true = np.linalg.norm(eig.vectors @ H - eig.values[:, None] * eig.vectors, axis=1) / np.abs(eig.values)
    np.testing.assert_allclose(eig.residuals, true, rtol=1e-3, atol=1e-12)
    assert np.all(eig.residuals < 1e-5)


def test_lanczos_with_a_tolerance_stops_early_and_its_residuals_are_true(x64):
    loss_fn, params, H = problem()
    dense = np.linalg.eigvalsh(np.asarray(H))[::-1][:2]
    key = jax.random.key(1)
    eig = curvature.top_eigenvalues(loss_fn, params, key, k=2, iters=60, tol=1e-4)
    assert 2 < int(eig.products) < 60 and np.all(eig.residuals < 1e-4)
    # eigenvalue error ~ residual^2 |lambda| / gap, far below the residual itself
    np.testing.assert_allclose(eig.values, dense, rtol=1e-6)
    true = np.linalg.norm(eig.vectors @ H - eig.values[:, None] * eig.vectors, axis=1) / np.abs(eig.values)
    np.testing.assert_allclose(eig.residuals, true, rtol=1e-3, atol=1e-12)
    # warm-started from its own answer it is done within a few products
    again = curvature.top_eigenvalues(loss_fn, params, key, k=2, iters=60, tol=1e-4, init=eig.vectors)
    assert int(again.products) <= 6 and np.allclose(again.values, dense, rtol=1e-6)
    assert int(curvature.top_eigenvalues(loss_fn, params, key, k=2, iters=20).products) == 20


@pytest.mark.parametrize("method,iters", [("power", 300), ("lobpcg", 60)])
def test_power_and_lobpcg_find_the_top_eigenvalues(x64, method, iters):
    loss_fn, params, H = problem()
    dense = np.linalg.eigvalsh(np.asarray(H))[::-1][:2]
    eig = curvature.top_eigenvalues(loss_fn, params, jax.random.key(2), k=2, iters=iters, method=method)
    np.testing.assert_allclose(eig.values, dense, rtol=1e-5)


def test_preconditioned_sharpness_matches_dense(x64):
    loss_fn, params, H = problem()
    flat, unravel = ravel_pytree(params)
    P = jnp.exp(jax.random.normal(jax.random.key(3), flat.shape))  # positive, spread over e^+-3
    s = 1 / np.sqrt(np.asarray(P))
    dense = np.linalg.eigvalsh(s[:, None] * np.asarray(H) * s[None, :])[-1]
    got = curvature.preconditioned_sharpness(loss_fn, params, unravel(P), jax.random.key(4), iters=60)
    assert float(got) == pytest.approx(dense, rel=1e-6)
    # and these are the eigenvalues of P^-1 H
    assert np.max(np.linalg.eigvals(np.asarray(H) / np.asarray(P)[:, None]).real) == pytest.approx(dense, rel=1e-8)


def test_directional_curvature_matches_dense(x64):
    loss_fn, params, H = problem()
    flat, unravel = ravel_pytree(params)
    g = jax.grad(loss_fn)(params)
    gf = ravel_pytree(g)[0]
    H, gf = np.asarray(H), np.asarray(gf)
    got = curvature.directional_curvature(loss_fn, params, g)
    assert float(got) == pytest.approx(gf @ H @ gf / (gf @ gf), rel=1e-8)
    P = np.exp(np.asarray(jax.random.normal(jax.random.key(6), flat.shape)))
    d = gf / P
    got = curvature.directional_curvature(loss_fn, params, g, precond=unravel(jnp.asarray(P)))
    assert float(got) == pytest.approx(d @ H @ d / (d @ (P * d)), rel=1e-8)
    u = gf / np.sqrt(P)  # the same number: curvature of P^-1/2 H P^-1/2 along P^-1/2 g
    Hs = H / np.sqrt(P)[:, None] / np.sqrt(P)[None, :]
    assert float(got) == pytest.approx(u @ Hs @ u / (u @ u), rel=1e-8)


def test_hutchinson_trace_within_its_error_bar(x64):
    loss_fn, params, H = problem()
    est, err = curvature.hutchinson_trace(loss_fn, params, jax.random.key(7), samples=400)
    exact = float(jnp.trace(H))
    assert abs(float(est) - exact) < 4 * float(err)
    assert float(err) < 0.2 * abs(exact)  # and the error bar is informative


def test_float32_top_eigenvalue_within_1e3():
    model = models.mlp((3, 12, 12, 2), "tanh")
    with jax.enable_x64(True):
        _, params64, H64 = problem()
        dense = float(np.linalg.eigvalsh(np.asarray(H64))[-1])
        kp, kx, ky = jax.random.split(jax.random.key(0), 3)
        x, y = np.asarray(jax.random.normal(kx, (24, 3))), np.asarray(jax.random.normal(ky, (24, 2)))
    params = jax.tree.map(lambda p: jnp.asarray(np.asarray(p), jnp.float32), params64)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    loss_fn = lambda p: losses.mse(model.apply(p, x), y)
    got = curvature.sharpness(loss_fn, params, jax.random.key(8), iters=30)
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(dense, rel=1e-3)


def test_bad_arguments_fail_clearly():
    loss_fn, params, _ = problem(widths=(2, 3, 1), n=5)
    from engine.errors import ConfigError
    with pytest.raises(ConfigError, match="^method:"):
        curvature.top_eigenvalues(loss_fn, params, jax.random.key(0), method="arnoldi")
    with pytest.raises(ConfigError, match="^iters:"):
        curvature.top_eigenvalues(loss_fn, params, jax.random.key(0), k=1, iters=100)


# ----------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "adagrad"])
def test_preconditioner_from_optax_state_reproduces_the_update(name):
    """-lr P^-1 m equals optax's update at every step, bias correction included."""
    opt = optim.optimizer(name, lr=0.05) if name != "adamw" else optim.adamw(lr=0.05, weight_decay=0.0)
    hp = opt.defaults
    tx = opt.tx  # built once, its hyperparameters (the defaults) in its state
    loss_fn, params, _ = problem(widths=(3, 6, 2), n=10)
    state = tx.init(params)
    for t in range(1, 6):
        g = jax.grad(loss_fn)(params)
        update, state = tx.update(g, state, params)
        P = optim.preconditioner(state)
        m = state.inner_state[0].mu if name in ("adam", "adamw") else g
        expected = jax.tree.map(lambda m, p: -hp["lr"] * m / p, m, P)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9), update, expected)
        params = optax.apply_updates(params, update)


def test_adam_preconditioner_is_undefined_before_the_first_step():
    opt = optim.adam()
    _, params, _ = problem(widths=(2, 3, 1), n=4)
    P = optim.preconditioner(opt.init(params))
    assert all(bool(jnp.all(jnp.isnan(p))) for p in jax.tree.leaves(P))


def test_stability_thresholds():
    assert optim.stability_threshold(optim.gd(lr=0.1), {}) == pytest.approx(20.0)
    assert optim.stability_threshold(optim.momentum(lr=0.1, momentum=0.9), {}) == pytest.approx(38.0)
    assert optim.stability_threshold(optim.adam(lr=0.01), {}) == pytest.approx(3800.0)  # 38/lr
    assert optim.stability_threshold(optim.adam(), {"lr": 0.1, "b1": 0.0}) == pytest.approx(20.0)


# ----------------------------------------------------------------------------- probes in the loop
def digits_sim(probes, optimizer=None, steps=40, every=10, examples=200):
    model = models.mlp((64, 16, 10), "tanh")
    return simulate.simulation(model, data.digits(n_train=examples), "mse", optimizer or optim.gd(lr=0.2),
                               steps=steps, every=every, probes=probes)


def dense_top(sim, params, k=1, precond=None):
    flat, unravel = ravel_pytree(params)
    x, y = sim.data.x, sim.data.y
    from engine.losses import mse
    model = models.mlp((64, 16, 10), "tanh")
    H = np.asarray(jax.hessian(lambda f: mse(model.apply(unravel(f), x), y))(flat))
    if precond is not None:
        s = 1 / np.sqrt(np.asarray(ravel_pytree(precond)[0]))
        H = s[:, None] * H * s[None, :]
    return np.linalg.eigvalsh(H)[::-1][:k]


@pytest.mark.parametrize("lr", [0.1, 0.3])
def test_warm_started_sharpness_tracks_the_dense_answer_with_10_hvps(x64, lr):
    """Sharpness every 10 steps, 30 HVPs cold at step 0, then 10 warm-started ones, each
    solve on until its residual is below 1e-3. At lr = 0.3 (lr * lambda = 1.75) the
    Hessian turns fast in the first 10 steps: 10 warm products left the first estimate
    2.9e-3 off (residual 1.8e-2); run to the tolerance it took 16 and was 1.8e-6 off.
    All within 1e-5 (measured: <= 3.3e-6)."""
    from engine import probes
    sim = digits_sim((probes.sharpness(k=1, iters=30, warm_iters=10),), steps=100, every=10)
    hp = {"lr": lr}
    state, rec = jax.jit(sim.init)(jax.random.key(0), hp, sim.data)
    assert float(rec["sharpness"]) == pytest.approx(dense_top(sim, state.params)[0], rel=1e-6)
    advance = jax.jit(lambda s: sim.advance(s, sim.data, 1))
    for i in range(10):
        state, rec = advance(state)
        assert float(rec["sharpness"][0]) == pytest.approx(dense_top(sim, state.params)[0], rel=1e-5)
        assert rec["eigen_residual"][0] < 1e-3 and 10 <= rec["eigen_products"][0] < 30


def test_preconditioned_probes_in_an_adam_run_match_dense(x64):
    sim = digits_sim(("preconditioned_sharpness", "preconditioned_directional_curvature"),
                     optimizer=optim.adam(lr=1e-3), steps=20, every=10)
    hp = {}
    state, rec0 = jax.jit(sim.init)(jax.random.key(1), hp, sim.data)
    assert np.isnan(rec0["preconditioned_sharpness"])  # P is undefined before Adam's first step
    state, rec = jax.jit(lambda s: sim.advance(s, sim.data, 2))(state)
    P = optim.preconditioner(state.opt_state)
    assert float(rec["preconditioned_sharpness"][-1]) == pytest.approx(dense_top(sim, state.params, 1, P)[0], rel=1e-3)
    assert np.isfinite(rec["preconditioned_directional_curvature"]).all()


def test_sweep_of_64_runs_records_sharpness_inside_the_scan_and_equals_per_run():
    sim = digits_sim(("loss", "sharpness", "directional_curvature", "trace"), steps=30, every=10, examples=100)
    # No host callback anywhere in the compiled advance: every HVP stays on the device.
    state, _ = sim.init(jax.random.key(0), {"lr": 0.1}, sim.data)
    jaxpr = str(jax.make_jaxpr(lambda s: sim.advance(s, sim.data, 3))(state))
    assert "callback" not in jaxpr and "eigh" in jaxpr  # the eigenproblem is solved in the program
    ds = sweep.sweep(sim, grid={"lr": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]}, seeds=8, strategy="vmap")
    assert ds.sharpness.sizes == {"seed": 8, "lr": 8, "step": 4}
    assert np.isfinite(ds.sharpness).all() and (ds.sharpness > 0).all()
    run = jax.jit(sim.run)
    for seed, lr in [(0, 0.05), (5, 0.3)]:
        alone = run(jax.random.fold_in(jax.random.key(0), seed), {"lr": lr})
        for name in ("sharpness", "directional_curvature", "trace"):
            np.testing.assert_allclose(ds[name].sel(seed=seed, lr=lr), alone[name], rtol=1e-4)


def test_top_k_probe_has_an_eigen_dimension():
    from engine import probes
    sim = digits_sim((probes.sharpness(k=3, iters=20, warm_iters=10),), steps=10, every=10, examples=50)
    ds = sweep.sweep(sim, grid={"lr": [0.1]}, seeds=2)
    assert ds.sharpness.dims == ("seed", "lr", "step", "eigen")
    assert list(ds.eigen.values) == [0, 1, 2]
    assert (ds.sharpness.diff("eigen") <= 1e-4).all()  # descending


def test_spectral_norm_sees_negative_curvature_and_matches_dense(x64):
    """||H||_2 = max |lambda|: at the saddle of a small-initialized ReLU net the +-s pair
    dominates; on the tanh problem the largest |lambda| may be either sign."""
    model = models.mlp((1, 20, 1), "relu", output_bias=False)
    d = data.luo_points()
    params = init.antisymmetric(model, init.luo(model)).sample(jax.random.key(0), {"gamma": 2.0, "gamma_prime": 0.0})
    saddle = lambda p: losses.mse(model.apply(p, d.x), d.y)
    flat, unravel = ravel_pytree(params)
    H_saddle = jax.hessian(lambda f: saddle(unravel(f)))(flat)
    # the saddle's top |lambda| are a near-degenerate cluster (one pair per neuron): slow
    for loss_fn, p, H, rtol in ((problem() + (1e-4,)), (saddle, params, H_saddle, 1e-2)):
        ev = np.linalg.eigvalsh(np.asarray(H))
        rho, v = curvature.spectral_norm(loss_fn, p, jax.random.key(1), iters=200)
        assert rho <= np.abs(ev).max() * (1 + 1e-9)           # a lower bound ...
        np.testing.assert_allclose(rho, np.abs(ev).max(), rtol=rtol)  # ... that converges
        np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-9)
    ev = np.linalg.eigvalsh(np.asarray(H_saddle))
    assert -ev.min() > 0.9 * ev.max() > 0.1  # the saddle's negative curvature is as large as its positive
    # warm-started from its own vector, 3 more products give the same answer
    rho2, _ = curvature.spectral_norm(saddle, params, jax.random.key(2), iters=3, init=v)
    np.testing.assert_allclose(rho2, rho, rtol=1e-3)


def test_step_size_probe_sets_the_learning_rate_of_the_next_interval(x64):
    """On a quadratic (linear model, MSE) H is constant: the probe's lr is
    fraction * 2 / lambda_max and GD with that lr is what the run does."""
    from engine import probes
    model = models.mlp((3, 1), "linear")
    x = jax.random.normal(jax.random.key(0), (16, 3))
    d = data.Dataset(x, x @ jnp.array([[1.0], [-2.0], [0.5]]))
    sim = simulate.simulation(model, d, "mse", optim.gd(lr=123.0), steps=20, every=5,
                              probes=("loss", probes.step_size(0.4, iters=100)))
    traj = sim.run(jax.random.key(1))
    xa = np.concatenate([np.asarray(x), np.ones((16, 1))], axis=1)
    lam = np.linalg.eigvalsh(xa.T @ xa / 16).max()
    np.testing.assert_allclose(traj["hessian_norm"], lam, rtol=1e-6)
    np.testing.assert_allclose(traj["lr"], 0.8 / lam, rtol=1e-6)
    # the same run with that lr fixed
    fixed = simulate.simulation(model, d, "mse", optim.gd(lr=float(0.8 / lam)), steps=20, every=5, probes=("loss",))
    np.testing.assert_allclose(traj["loss"], fixed.run(jax.random.key(1))["loss"], rtol=1e-5)


def test_under_a_step_size_probe_loss_change_uses_the_lr_of_the_step_it_predicts(x64):
    """loss_change at a record is L after the next update minus L now; with the step size
    chosen at that record (here every step), it equals the next record's loss minus this one."""
    from engine import probes
    model = models.mlp((1, 8, 1), "tanh")
    sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(lr=123.0), init.scaled(model),
                              steps=12, every=1,
                              probes=("loss", "loss_change", probes.step_size(0.9, iters=30, warm_iters=30)))
    traj = sim.run(jax.random.key(1))
    assert np.ptp(traj["lr"]) > 1e-3 * traj["lr"].mean()  # the lr changes from record to record
    np.testing.assert_allclose(traj["loss_change"][:-1], np.diff(traj["loss"]), rtol=1e-9, atol=1e-15)


def test_an_unconverged_eigen_solve_says_so_through_its_residual(x64):
    """Too few Lanczos products give a wrong eigenvalue -- and a residual that shows it."""
    loss_fn, params, H = problem()
    top = np.linalg.eigvalsh(np.asarray(H))[-1]
    short = curvature.top_eigenvalues(loss_fn, params, jax.random.key(1), k=1, iters=3)
    full = curvature.top_eigenvalues(loss_fn, params, jax.random.key(1), k=1, iters=40)
    assert abs(short.values[0] - top) / top > 1e-3 and short.residuals[0] > 1e-2
    assert abs(full.values[0] - top) / top < 1e-8 and full.residuals[0] < 1e-5


def test_a_probe_can_ask_for_full_float32_products():
    """probes.with_precision(p, "highest") lowers every product of the probe at HIGHEST
    precision (GPUs default float32 matmuls to TF32) and leaves training alone; on CPU,
    where float32 products are full precision anyway, the records are unchanged."""
    model = models.mlp((1, 16, 1), "tanh")

    def run(probe):
        sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(lr=0.1), init.scaled(model),
                                  steps=20, every=10, probes=("loss", probe))
        return jax.jit(sim.run).lower(jax.random.key(0), {}).as_text(), jax.jit(sim.run)(jax.random.key(0), {})
    plain_text, plain = run(probes.sharpness())
    full_text, full = run(probes.with_precision(probes.sharpness(), "highest"))
    assert "HIGHEST" not in plain_text and full_text.count("HIGHEST") > 10
    for name in plain:
        np.testing.assert_array_equal(full[name], plain[name], err_msg=name)


def _trained_mlp_state(probe_list, steps=30):
    """A 1-6-6-1 tanh MLP after `steps` of GD at a large rate (a non-convex point, with
    negative curvature), in float64: (final state, records, loss of params)."""
    model, d = models.mlp((1, 6, 6, 1), "tanh"), data.chebyshev(3, 20)
    sim = simulate.simulation(model, d, "mse", optim.gd(lr=0.5), init.scaled(model), steps=steps, every=steps // 3,
                              probes=probe_list)
    state, _ = sim.init(jax.random.key(2), {}, sim.data)
    state, recs = sim.advance(state, sim.data, 3)
    loss = lambda p: 0.5 * jnp.mean(jnp.sum((model.apply(p, d.x) - d.y) ** 2, -1))
    return state, jax.tree.map(np.asarray, recs), loss


def test_hessian_extremes_are_the_dense_spectrums_ends():
    """lambda_max and lambda_min (signed) against eigh of the dense float64 Hessian, rel
    1e-6, at a point where lambda_min < 0."""
    from jax.flatten_util import ravel_pytree
    with jax.enable_x64(True):
        state, recs, loss = _trained_mlp_state(("loss", probes.hessian_extremes(iters=60, warm_iters=60)))
        flat, unravel = ravel_pytree(state.params)
        dense = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat)))
    assert dense[0] < 0 < dense[-1]
    np.testing.assert_allclose(recs["lambda_max"][-1], dense[-1], rtol=1e-6)
    np.testing.assert_allclose(recs["lambda_min"][-1], dense[0], rtol=1e-6)
    assert recs["lambda_min_residual"][-1] < 1e-6 and recs["lambda_max_residual"][-1] < 1e-6


def test_layer_sharpness_is_the_top_eigenvalue_of_each_dense_diagonal_block():
    from jax.flatten_util import ravel_pytree
    with jax.enable_x64(True):
        state, recs, loss = _trained_mlp_state(("loss", probes.layer_sharpness(iters=60, warm_iters=60)))
        expected = []
        for i, block in enumerate(state.params):
            flat, unravel = ravel_pytree(block)
            with_block = lambda f, i=i: loss(tuple(unravel(f) if j == i else b for j, b in enumerate(state.params)))
            expected.append(np.linalg.eigvalsh(np.asarray(jax.hessian(with_block)(flat)))[-1])
    assert recs["layer_sharpness"].shape == (3, 3)
    np.testing.assert_allclose(recs["layer_sharpness"][-1], expected, rtol=1e-6)


def test_batch_and_minibatch_sharpness_are_the_dense_per_batch_quantities():
    """On a fixed set of minibatches (the probe's own draw, `probes.minibatches`), in
    float64: batch_sharpness is the mean of g_B^T H_B g_B / ||g_B||^2 from the dense
    per-batch Hessians, minibatch_sharpness the mean of their top eigenvalues, each with
    std / sqrt(batches) as its error (rel 1e-6)."""
    from jax.flatten_util import ravel_pytree
    with jax.enable_x64(True):
        model, d = models.mlp((1, 6, 1), "tanh"), data.chebyshev(3, 20)
        params = jax.tree.map(lambda p: p * 1.5, model.init(jax.random.key(4)))
        objective = lambda p, x, y: 0.5 * jnp.mean(jnp.sum((model.apply(p, x) - y) ** 2, -1))
        snap = probes.Snapshot(params, None, objective, model.apply, d, None, None, None, jax.random.key(7), True, 5)
        got = {}
        for probe in (probes.batch_sharpness(batches=6), probes.minibatch_sharpness(batches=6, iters=40)):
            got.update(jax.tree.map(np.asarray, probe.measure(snap, None)[0]))
        flat, unravel = ravel_pytree(params)
        along, top = [], []
        for name in ("batch_sharpness", "minibatch_sharpness"):
            for i in np.asarray(probes.minibatches(probes._key(snap, name), d.n, 5, 6)):
                loss_b = lambda f: objective(unravel(f), d.x[i], d.y[i])
                H, g = np.asarray(jax.hessian(loss_b)(flat)), np.asarray(jax.grad(loss_b)(flat))
                (along if name == "batch_sharpness" else top).append(
                    g @ H @ g / (g @ g) if name == "batch_sharpness" else np.linalg.eigvalsh(H)[-1])
    for name, values in (("batch_sharpness", along), ("minibatch_sharpness", top)):
        np.testing.assert_allclose(got[name], np.mean(values), rtol=1e-6)
        np.testing.assert_allclose(got[f"{name}_error"], np.std(values, ddof=1) / np.sqrt(6), rtol=1e-6)
    assert np.ptp(along) > 0  # the batches differ


def test_batch_sharpness_runs_inside_minibatch_training():
    model = models.mlp((64, 16, 10), "tanh")
    sim = simulate.simulation(model, data.digits(n_train=200), "cross_entropy", optim.gd(lr=0.1), steps=20,
                              every=10, probes=("loss", "batch_sharpness"), batch_size=32)
    traj = jax.jit(sim.run)(jax.random.key(0))
    assert np.all(np.isfinite(traj["batch_sharpness"])) and np.all(traj["batch_sharpness_error"] > 0)


def _noise_problem(n, batch_size=4, seed=0):
    """A 2-8-8-1 tanh MLP (105 parameters) at a non-minimal point of a noisy regression
    of n examples, in float64: (Snapshot with the probe's record key, objective, data)."""
    model = models.mlp((2, 8, 8, 1), "tanh")
    kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, 2))
    d = data.Dataset(x, jnp.sin(2 * x[:, :1]) + 0.3 * jax.random.normal(ky, (n, 1)))
    params = jax.tree.map(lambda p: 1.5 * p, model.init(kp))
    objective = lambda p, x, y: 0.5 * jnp.mean(jnp.sum((model.apply(p, x) - y) ** 2, -1))
    snap = probes.Snapshot(params, lambda p: objective(p, d.x, d.y), objective, model.apply, d, None, None, None,
                           jax.random.key(7), True, batch_size)
    return snap, objective, d


def _measure(probe, snap):
    return jax.tree.map(np.asarray, jax.jit(lambda p: probe.measure(snap._replace(params=p), probe.init(p)
                                                                    if probe.init else None)[0])(snap.params))


def test_gradient_noise_and_non_uniformity_are_the_dense_quantities_on_the_probes_batches(x64):
    """On the probe's own 8 batches of 4 of 24 examples: gradient_noise is the mean of
    ||g_b - g||^2 (error std / sqrt(8)) from dense gradients, and non_uniformity is
    sqrt(B (n-1)/(n-B) lambda_max(mean_b (H_b - H)^2)) from the dense Hessians (eigh),
    rel 1e-6 (measured: 1e-15 from 20 Lanczos products of the 105-parameter operator,
    whose rank is small; 4e-13 from 10)."""
    n, B, batches = 24, 4, 8
    snap, objective, d = _noise_problem(n, B)
    got = _measure(probes.gradient_noise(batches=batches, iters=20), snap)
    flat, unravel = ravel_pytree(snap.params)
    on = lambda f, i: objective(unravel(f), d.x[i], d.y[i])
    hessian, grad = jax.jit(jax.hessian(on)), jax.jit(jax.grad(on))
    idx = np.asarray(probes.minibatches(probes._key(snap, "gradient_noise"), n, B, batches))
    assert len({tuple(sorted(i)) for i in idx}) == batches  # distinct batches, each without replacement
    assert all(len(set(i)) == B for i in idx)
    H, g = np.asarray(hessian(flat, np.arange(n))), np.asarray(grad(flat, np.arange(n)))
    noise = [np.sum((np.asarray(grad(flat, i)) - g) ** 2) for i in idx]
    S = np.mean([(h - H) @ (h - H) for h in (np.asarray(hessian(flat, i)) for i in idx)], axis=0)
    np.testing.assert_allclose(got["gradient_noise"], np.mean(noise), rtol=1e-6)
    np.testing.assert_allclose(got["gradient_noise_error"], np.std(noise, ddof=1) / np.sqrt(batches), rtol=1e-6)
    np.testing.assert_allclose(got["non_uniformity"], np.sqrt(B * (n - 1) / (n - B) * np.linalg.eigvalsh(S)[-1]),
                               rtol=1e-6)
    assert got["non_uniformity_residual"] < 1e-6
    # without the non-uniformity: the same gradient noise, nothing else, no state
    cheap = probes.gradient_noise(batches=batches, non_uniformity=False)
    assert set(cheap.outputs) == {"gradient_noise", "gradient_noise_error"} and cheap.init is None
    np.testing.assert_allclose(_measure(cheap, snap)["gradient_noise"], got["gradient_noise"], rtol=1e-12)


def test_gradient_noise_and_non_uniformity_estimate_the_per_example_quantities(x64):
    """With many batches the estimators approach the exact values from all n per-example
    gradients and Hessians: tr Sigma_B = (n-B)/(B(n-1)) (1/n) sum_i ||g_i - g||^2 within 4
    standard errors, and s = sqrt(lambda_max((1/n) sum_i H_i^2 - H^2)) (Wu, Ma & E 2018)
    within 6% (measured over 20 keys at 512 batches of 4 of 12: mean -0.2%, std 1.2%;
    leaving out the without-replacement factor (n-1)/(n-B) would be 15% low)."""
    n, B = 12, 4
    snap, objective, d = _noise_problem(n, B)
    got = _measure(probes.gradient_noise(batches=512, iters=20), snap)
    flat, unravel = ravel_pytree(snap.params)
    one = lambda f, i: objective(unravel(f), d.x[i][None], d.y[i][None])
    Hi = np.asarray(jax.jit(jax.vmap(jax.hessian(one), (None, 0)))(flat, jnp.arange(n)))
    gi = np.asarray(jax.jit(jax.vmap(jax.grad(one), (None, 0)))(flat, jnp.arange(n)))
    H, g = Hi.mean(0), gi.mean(0)
    trace = (n - B) / (B * (n - 1)) * np.mean(np.sum((gi - g) ** 2, axis=1))
    s = np.sqrt(np.linalg.eigvalsh(np.mean(Hi @ Hi, axis=0) - H @ H)[-1])
    assert abs(got["gradient_noise"] - trace) < 4 * got["gradient_noise_error"] < 0.2 * trace
    np.testing.assert_allclose(got["non_uniformity"], s, rtol=0.06)


def test_gradient_noise_runs_inside_minibatch_sgd():
    model = models.mlp((1, 8, 8, 1), "tanh")
    sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(lr=0.1), steps=20, every=10,
                              batch_size=4, probes=("loss", probes.gradient_noise(batches=4, iters=20, warm_iters=10)))
    traj = jax.tree.map(np.asarray, jax.jit(sim.run)(jax.random.key(0)))
    for name in ("gradient_noise", "gradient_noise_error", "non_uniformity"):
        assert traj[name].shape == (3,) and np.all(np.isfinite(traj[name])) and np.all(traj[name] > 0), name
    assert np.all(traj["non_uniformity_residual"] < 1e-2)  # warm-started solves converge too


def test_hutchinson_frobenius_within_its_error_bar(x64):
    """||H||_F from 400 Rademacher ||Hz||^2 within 4 standard errors of the dense
    sqrt(sum H_ij^2), and the probe records the same estimate on the full training loss."""
    loss_fn, params, H = problem()
    est, err = curvature.hutchinson_frobenius(loss_fn, params, jax.random.key(7), samples=400)
    exact = float(jnp.sqrt(jnp.sum(H ** 2)))
    assert abs(float(est) - exact) < 4 * float(err) and float(err) < 0.1 * exact
    model = models.mlp((1, 8, 1), "tanh")
    sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(lr=0.1), steps=10, every=10,
                              probes=("loss", probes.hessian_frobenius(samples=4)))
    traj = jax.jit(sim.run)(jax.random.key(0))
    assert traj["hessian_frobenius"].shape == (2,) and np.all(traj["hessian_frobenius_error"] > 0)
