"""The Hessian's eigenvalue density by stochastic Lanczos quadrature, against the dense
float64 spectrum (jax.hessian + eigh) of small MLPs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from engine import analysis, curvature, data, init, losses, models, optim, probes, simulate, sweep
from engine.errors import ConfigError


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def trained(widths, d, loss="mse", steps=200, lr=0.2):
    """A tanh MLP after `steps` of GD from its init (key 2), in float64: (loss_fn,
    params, the dense Hessian's eigenvalues, ascending)."""
    with jax.enable_x64(True):
        model = models.mlp(widths, "tanh")
        f = losses.mse if loss == "mse" else losses.cross_entropy
        loss_fn = lambda p: f(model.apply(p, jnp.asarray(d.x, float)), jnp.asarray(d.y, float))
        descend = lambda _, p: jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss_fn)(p))
        params = jax.jit(lambda p: jax.lax.fori_loop(0, steps, descend, p))(model.init(jax.random.key(2)))
        flat, unravel = ravel_pytree(params)
        H = jax.jit(jax.hessian(lambda v: loss_fn(unravel(v))))(flat)
    return loss_fn, params, np.linalg.eigvalsh(np.asarray(H))


@functools.cache
def regression():
    """1-16-16-1 on chebyshev-3-20 (321 parameters): two outliers (15.1, 9.7) that hold
    94% of tr H, the rest within [-0.03, 0.44]."""
    return trained((1, 16, 16, 1), data.chebyshev(3, 20))


@functools.cache
def classifier():
    """64-4-10 on 200 digits, cross-entropy (310 parameters): four eigenvalues above
    lambda_max / 2 (0.40 ... 0.22) and a bulk that carries most of tr H."""
    return trained((64, 4, 10), data.digits(n_train=200), "cross_entropy", lr=0.5)


@functools.cache
def quadrature(problem, starts=4, iters=30, deflate=8):
    """(nodes, weights, dense eigenvalues) of `problem` from key 1, in float64."""
    loss_fn, params, dense = problem()
    with jax.enable_x64(True):
        solve = lambda p: curvature.spectral_quadrature(loss_fn, p, jax.random.key(1), starts, iters, deflate)
        q = jax.jit(solve)(params)
    return np.asarray(q.nodes), np.asarray(q.weights), dense


def test_gauss_quadrature_is_exact_for_polynomials_up_to_degree_2m_minus_1(x64):
    """sum_i tau_i theta_i^j = z^T A^j z for j <= 2m - 1 (Golub & Meurant), m = 6."""
    A = jax.random.normal(jax.random.key(0), (40, 40))
    A = (A + A.T) / 2
    z = jax.random.normal(jax.random.key(1), (40,))
    z = z / jnp.linalg.norm(z)
    theta, tau = curvature.gauss_quadrature(lambda u: A @ u, z, 6)
    np.testing.assert_allclose(np.sum(tau), 1.0, rtol=1e-12)
    for j in range(12):
        exact = z @ np.linalg.matrix_power(np.asarray(A), j) @ z
        np.testing.assert_allclose(np.sum(tau * theta**j), exact, rtol=1e-8, err_msg=f"degree {j}")


def test_an_exhausted_krylov_space_leaves_zero_weight_nodes_and_no_nan():
    """A with 3 distinct eigenvalues, z spread over all three: 8 steps find them with
    weight 1/3 each; the 5 decoupled nodes weigh 0 (float32, as a sweep runs)."""
    d = jnp.repeat(jnp.array([1.0, 2.0, 3.0]), 10)
    theta, tau = jax.jit(lambda z: curvature.gauss_quadrature(lambda u: d * u, z, 8))(jnp.ones(30) / np.sqrt(30))
    assert np.all(np.isfinite(theta)) and np.all(np.isfinite(tau))
    live = np.asarray(tau) > 1e-6
    np.testing.assert_allclose(np.sort(np.asarray(theta)[live]), [1, 2, 3], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(tau)[live], 1 / 3, rtol=1e-5)
    assert live.sum() == 3 and np.all(np.asarray(tau)[~live] == 0)


def test_first_moment_is_the_trace_within_one_percent():
    """n sum_i w_i theta_i (mean over 16 starts) against tr H: deflation takes the two
    outliers (most of tr H) exactly, so only the bulk's Hutchinson error is left
    (measured over 40 keys: std 0.19%, max 0.64%; plain SLQ: std 24%). Where the bulk
    holds most of tr H (the classifier) the error is Hutchinson's: std 2.3% at 16 starts."""
    nodes, weights, dense = quadrature(regression, starts=16)
    moment = len(dense) * np.mean(np.sum(weights * nodes, axis=1))
    np.testing.assert_allclose(moment, dense.sum(), rtol=0.01)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-10)


@pytest.mark.parametrize("problem", [regression, classifier])
def test_mass_above_half_the_top_eigenvalue_counts_the_outliers(problem):
    """n times the quadrature's mass above lambda_max / 2, at the default settings (4
    starts, 30 nodes, 8 deflated), within one eigenvalue of the dense count (2 and 4
    here; exact over 40 keys. Plain SLQ's count has std 0.94 and 1.21, off by >= 1 in
    25% and 30% of the keys: each outlier weighs (v^T z)^2 ~ chi^2_1 / n)."""
    nodes, weights, dense = quadrature(problem)
    assert nodes.shape == weights.shape == (4, 38)
    count = np.sum(dense > dense[-1] / 2)
    assert count >= 2
    mass = len(dense) * np.mean(np.sum(np.where(nodes > dense[-1] / 2, weights, 0.0), axis=1))
    assert abs(mass - count) < 1, (mass, count)
    # the deflated nodes are the top eigenvalues, the same in every start
    np.testing.assert_allclose(nodes[:, :count], np.broadcast_to(dense[::-1][:count], (4, count)), rtol=1e-6)


def test_the_density_integrates_to_one_on_any_grid_that_covers_the_spectrum(x64):
    nodes, weights, dense = quadrature(regression)
    grid = np.linspace(dense[0] - 1, dense[-1] + 1, 801)
    for sigma in (0.05, 0.2):
        density = np.asarray(curvature.spectral_density(nodes, weights, grid, sigma))
        assert density.shape == (801,) and np.all(density >= 0)
        np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-6)


def test_the_probe_runs_under_vmap_and_a_run_in_the_sweep_equals_the_run_alone():
    """Two learning rates in one vmapped float64 sweep, against each run alone: the
    same density, quadrature and radius; the relative density integrates to 1 over
    `relative_eigenvalue`; the analysis helper redraws it in absolute units."""
    model, d = models.mlp((1, 16, 16, 1), "tanh"), data.chebyshev(3, 20)
    sim = simulate.simulation(model, d, "mse", optim.gd(lr=0.2), init.scaled(model), steps=40, every=20,
                              probes=("loss", probes.spectral_density(deflate=4, iters=20)))
    ds = sweep.sweep(sim, grid={"lr": [0.1, 0.2]}, seeds=1, strategy="vmap", x64=True, progress=False)
    assert ds.spectral_density.dims == ("seed", "lr", "step", "relative_eigenvalue")
    assert ds.spectrum_nodes.dims == ("seed", "lr", "step", "spectrum_start", "spectrum_node")
    assert ds.spectrum_nodes.shape[-2:] == (4, 24)
    u = ds.relative_eigenvalue.values
    assert u[0] == -1.1 and u[-1] == 1.1 and len(u) == 201
    np.testing.assert_allclose(np.trapezoid(ds.spectral_density.values, u, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ds.spectrum_radius, np.abs(ds.spectrum_nodes).max(("spectrum_start", "spectrum_node")))
    with jax.enable_x64(True):
        for lr in (0.1, 0.2):
            alone = jax.jit(sim.run)(jax.random.fold_in(jax.random.key(0), 0), {"lr": lr})
            for name in ("spectral_density", "spectrum_nodes", "spectrum_weights", "spectrum_radius"):
                np.testing.assert_allclose(ds[name].sel(seed=0, lr=lr), alone[name], rtol=1e-9, atol=1e-12,
                                           err_msg=name)
    grid = np.linspace(-1.2, 1.2, 241) * float(ds.spectrum_radius.max())
    absolute = analysis.spectral_density(ds, grid)
    assert absolute.dims == ("seed", "lr", "step", "eigenvalue")
    np.testing.assert_allclose(np.trapezoid(absolute.values, grid, axis=-1), 1.0, rtol=1e-6)


def test_an_absolute_grid_is_recorded_on_its_eigenvalues_and_plain_slq_has_no_state():
    model = models.mlp((1, 8, 1), "tanh")
    grid = [float(t) for t in np.linspace(-2, 10, 61)]
    probe = probes.spectral_density(starts=2, iters=10, grid=grid, deflate=0)
    assert probe.init is None and probe.coords["eigenvalue"] == grid
    sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(lr=0.1), init.scaled(model),
                              steps=10, every=10, probes=("loss", probe))
    traj = jax.tree.map(np.asarray, jax.jit(sim.run)(jax.random.key(0)))
    assert traj["spectral_density"].shape == (2, 61) and traj["spectrum_nodes"].shape == (2, 2, 10)
    np.testing.assert_allclose(traj["spectral_density"], curvature.spectral_density(
        traj["spectrum_nodes"], traj["spectrum_weights"], np.asarray(grid), 2 * 12 / 60), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,field", [({"grid": 1}, "probes.grid"), ({"grid": [1.0, 0.0]}, "probes.grid"),
                                      ({"grid": "wide"}, "probes.grid"), ({"sigma": 0}, "probes.sigma"),
                                      ({"starts": 0}, "probes.starts"), ({"deflate": -1}, "probes.deflate"),
                                      ({"deflate": 8, "deflate_iters": 4}, "probes.deflate_iters")])
def test_bad_settings_fail_before_anything_compiles(kw, field):
    with pytest.raises(ConfigError) as err:
        probes.spectral_density(**kw)
    assert err.value.field == field
