"""Loss-landscape slices (Li et al. 2018): filter-normalized directions, the grid
evaluated in one program, checked against direct evaluations and the dense Hessian."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from engine import curvature, data, landscape, models, simulate, sweep
from engine.errors import ConfigError


def _setup():
    model = models.mlp((1, 16, 16, 1), "tanh")
    sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", steps=40, every=20, snapshots=[0, 40])
    params = model.init(jax.random.key(3))
    return sim, params


def test_directions_have_each_filter_the_norm_of_the_parameters_filter_and_skip_biases():
    _, params = _setup()
    for d, w in zip(jax.tree.leaves(landscape.directions(jax.random.key(0), params, 1)[0]), jax.tree.leaves(params)):
        if w.ndim == 1:
            assert not np.any(np.asarray(d))
        else:
            np.testing.assert_allclose(np.linalg.norm(d, axis=0), np.linalg.norm(w, axis=0), rtol=1e-5)


def test_a_slice_equals_direct_evaluation_and_its_curvature_the_dense_quadratic_form():
    """float64: grid values against loss_at(theta + a d1 + b d2) at a few points; the
    second difference at the centre (step 1e-4) against d^T H d from jax.hessian (rel 1e-6)."""
    with sweep.precision(True):
        sim, params = _setup()
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        dirs = landscape.directions(jax.random.key(1), params, 2)
        grid = np.linspace(-1, 1, 11)
        values = np.asarray(landscape.slice_loss(sim.loss_at, params, dirs, grid))
        assert values.shape == (11, 11)
        for i, j in [(0, 0), (5, 5), (2, 9), (10, 3)]:
            moved = jax.tree.map(lambda p, a, b: p + grid[i] * a + grid[j] * b, params, *dirs)
            np.testing.assert_allclose(values[i, j], float(sim.loss_at(moved)), rtol=1e-12)
        fine = np.array([-1e-4, 0.0, 1e-4])
        curv = landscape.curvature_at_centre(landscape.slice_loss(sim.loss_at, params, dirs, fine), fine)
        flat, unravel = ravel_pytree(params)
        H = jax.hessian(lambda f: sim.loss_at(unravel(f)))(flat)
        for c, d in zip(curv, dirs):
            v = ravel_pytree(d)[0]
            np.testing.assert_allclose(c, float(v @ H @ v), rtol=1e-6)


def test_along_the_top_eigenvector_the_slice_curvature_is_the_sharpness():
    with sweep.precision(True):
        sim, params = _setup()
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        eig = curvature.top_eigenvalues(sim.loss_at, params, jax.random.key(0), k=1, iters=40)
        fine = np.array([-1e-4, 0.0, 1e-4])
        curv = landscape.curvature_at_centre(
            landscape.slice_loss(sim.loss_at, params, landscape.along(params, eig.vectors), fine), fine)
        np.testing.assert_allclose(curv[0], float(eig.values[0]), rtol=1e-6)


def test_saved_parameters_are_read_back_and_a_missing_step_is_refused():
    sim, _ = _setup()
    ds = sweep.sweep(sim, seeds=1, progress=False)
    p = landscape.saved_params(sim, ds, 40, seed=0)
    assert float(sim.loss_at(p)) == pytest.approx(float(ds.loss.sel(step=40, seed=0)), rel=1e-5)
    with pytest.raises(ConfigError, match="step"):
        landscape.saved_params(sim, ds, 20, seed=0)


@pytest.mark.parametrize("call, field", [
    (lambda p: landscape.directions(jax.random.key(0), p, 0), "landscape.count"),
    (lambda p: landscape.slice_loss(lambda q: 0.0, p, landscape.directions(jax.random.key(0), p, 1), [0.0]),
     "landscape.grid"),
    (lambda p: landscape.check_grid([-1.0, -0.5, 0.5]), "landscape.grid"),
    (lambda p: landscape.stepped_curvature(np.zeros(3), [-1e-3, 0.0, 2e-3]), "landscape.fine"),
])
def test_bad_input_is_refused(call, field):
    _, params = _setup()
    with pytest.raises(ConfigError) as e:
        call(params)
    assert e.value.field == field


def test_snapshots_are_kept_in_float64_too():
    """Under x64 the snapshot slot (int32) and the column index (int64 by default) once
    disagreed, and dynamic_update_slice refused them."""
    sim, _ = _setup()
    ds = sweep.sweep(sim, seeds=1, progress=False, x64=True)
    with sweep.precision(True):
        p = landscape.saved_params(sim, ds, 40, seed=0)
        assert ravel_pytree(p)[0].dtype == jnp.float64
        assert float(sim.loss_at(p)) == pytest.approx(float(ds.loss.sel(step=40, seed=0)), rel=1e-12)


def test_stepped_curvature_reads_a_quadratic_exactly_at_every_step_and_a_kink_only_beyond_it():
    """On L(a, b) = 3 a^2 + a b - b^2 every step gives (6, -2); on |a - 0.01| + a^2 the
    steps below the kink at 0.01 give 2, the ones beyond it more (the kink's 1/h)."""
    steps = np.array([1e-4, 1e-3, 1e-1])
    fine = np.concatenate([-steps[::-1], [0.0], steps])
    a, b = np.meshgrid(fine, fine, indexing="ij")
    np.testing.assert_allclose(landscape.stepped_curvature(3 * a**2 + a * b - b**2, fine), [[6.0, -2.0]] * 3,
                               rtol=1e-9)
    kinked = landscape.stepped_curvature(np.abs(fine - 0.01) + fine**2, fine)[:, 0]
    np.testing.assert_allclose(kinked[:2], 2.0, rtol=1e-6)
    assert kinked[2] > 10


def test_kink_distance_is_where_a_first_layer_preactivation_first_changes_sign():
    """Brute force: walk a along d in steps of 1e-4 of the predicted distance and find
    the first sign change of any pre-activation x w + b on the training points."""
    model = models.mlp((1, 8, 1), "relu")
    params = model.init(jax.random.key(5))
    d = landscape.directions(jax.random.key(6), params, 1)[0]
    d = jax.tree.map(lambda v: v + 0.1, d)  # move the biases too
    x = data.luo_points().x
    dist = landscape.kink_distance(params, d, x)
    norm = float(jnp.linalg.norm(ravel_pytree(d)[0]))
    w, b, dw, db = (np.asarray(v, float) for v in (params[0]["w"], params[0]["b"], d[0]["w"], d[0]["b"]))
    x = np.asarray(x, float)
    a = np.linspace(0, 2 * dist / norm, 20001)[:, None, None]
    flipped = np.sign(x @ w + b + a * (x @ dw + db)) != np.sign(x @ w + b)   # [a, example, unit]
    a = float(a[np.argmax(flipped.any(axis=(1, 2))), 0, 0])
    np.testing.assert_allclose(a * norm, dist, rtol=2e-4)
