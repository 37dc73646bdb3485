"""Central flows (engine.flows) against dense float64 computations on a small MLP: the
third-derivative term against jax.hessian, the SDCP solver against planted solutions
and a long independent solve, the one-eigenvalue closed form; and a run alone equals
the same run in a vmapped batch of 16, with no host callback in its program."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from engine import data, flows, models, sweep
from engine.errors import ConfigError


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def problem(seed=0, n=24, widths=(2, 5, 5, 1)):
    """A swish MLP on Gaussian points with Gaussian targets: flat loss L(w), w [n]."""
    model = models.mlp(widths, "silu")
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    w, unravel = ravel_pytree(model.init(kp))
    x = jax.random.normal(kx, (n, widths[0]))
    y = jax.random.normal(ky, (n, widths[-1]))
    return (lambda w: jnp.mean(jnp.sum((model.apply(unravel(w), x) - y) ** 2, -1))), w


def test_third_derivative_matches_the_gradient_of_the_dense_hessian(x64):
    """grad_w (u^T H(w) v) by nested jvp against jacfwd of u^T jax.hessian(L)(w) v, rel 1e-6
    (measured: ~1e-15); every pair of pair_gradients likewise, and the tensor is symmetric."""
    L, w = problem()
    U = jax.random.normal(jax.random.key(7), (3, w.shape[0]))
    dense = jax.jit(lambda a, b: jax.jacfwd(lambda p: a @ jax.hessian(L)(p) @ b)(w))
    np.testing.assert_allclose(flows.third_derivative(L, w, U[0], U[1]), dense(U[0], U[1]), rtol=1e-6, atol=1e-12)
    g = flows.pair_gradients(L, w, U)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(g[i, j], dense(U[i], U[j]), rtol=1e-6, atol=1e-12)


def _operator(k, seed, n=40):
    """A Gram tensor G[i,j,a,b] = <g_ij, g_ab> of symmetric random g [k, k, n]."""
    g = jax.random.normal(jax.random.key(seed), (k, k, n))
    g = g + g.transpose(1, 0, 2)
    return jnp.einsum("ijn,abn->ijab", g, g)


def _planted(k, rank, seed):
    """(B, G, X*): an SDCP whose solution is X* of the given rank (Lin is positive
    definite on symmetric matrices, so the solution is unique): X* = V diag(s) V^T,
    M* PSD with M* V = 0, B = M* - Lin(X*)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    V, rest = Q[:, :rank], Q[:, rank:]
    X = V @ np.diag(rng.uniform(0.5, 2.0, rank)) @ V.T
    M = rest @ np.diag(rng.uniform(0.5, 2.0, k - rank)) @ rest.T
    G = np.asarray(_operator(k, seed)) / 40.0
    return M - np.einsum("ijab,ab->ij", G, X), G, X


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sdcp_recovers_planted_solutions_of_every_rank(x64, k):
    """For k <= 3 and each rank 0..k, the solver (300 ADMM iterations, cold) finds the
    planted X* to 1e-8 with a KKT residual < 1e-10 (measured: residuals ~1e-15)."""
    for rank in range(k + 1):
        B, G, X = _planted(k, rank, seed=10 * k + rank)
        sol = flows.solve_sdcp(jnp.asarray(B), jnp.asarray(G), 300)
        np.testing.assert_allclose(sol.X, X, atol=1e-8, err_msg=f"rank {rank}")
        assert float(sol.residual) < 1e-10, (rank, float(sol.residual))
        assert np.linalg.eigvalsh(np.asarray(sol.X)).min() > -1e-12


def _long_projected_gradient(B, G, iters=20000):
    """An independent solve: accelerated projected gradient (FISTA) on the PSD cone in
    numpy float64, step 1 / ||Lin||."""
    k = B.shape[0]
    Gm = G.reshape(k * k, k * k)
    step = 1.0 / np.linalg.eigvalsh(0.5 * (Gm + Gm.T))[-1]
    psd = lambda A: (lambda lam, V: (V * np.maximum(lam, 0)) @ V.T)(*np.linalg.eigh(0.5 * (A + A.T)))
    X = Y = np.zeros((k, k))
    t = 1.0
    for _ in range(iters):
        Xn = psd(Y - step * (B + (Gm @ Y.reshape(-1)).reshape(k, k)))
        tn = (1 + np.sqrt(1 + 4 * t * t)) / 2
        Y, X, t = Xn + (t - 1) / tn * (Xn - X), Xn, tn
    return X


@pytest.mark.parametrize("k", [2, 3])
def test_sdcp_agrees_with_a_long_independent_solve_on_random_problems(x64, k):
    """Random B (indefinite) and Gram G, k = 2, 3: our 200-iteration ADMM against 20000
    FISTA iterations, to 1e-7 (measured ~1e-12)."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        A = rng.normal(size=(k, k))
        B = 0.5 * (A + A.T) - 0.5 * np.eye(k)
        G = np.asarray(_operator(k, 100 + seed)) / 40.0
        sol = flows.solve_sdcp(jnp.asarray(B), jnp.asarray(G), 200)
        np.testing.assert_allclose(sol.X, _long_projected_gradient(B, G), atol=1e-7)
        assert float(sol.residual) < 1e-9


def test_sdcp_mask_and_warm_start(x64):
    """Masked rows/columns stay exactly 0 and the rest solves the sub-problem; a warm
    start at the solution stays there."""
    B, G, X = _planted(3, 2, seed=5)
    mask = jnp.asarray([True, True, False])
    sol = flows.solve_sdcp(jnp.asarray(B), jnp.asarray(G), 300, mask=mask)
    assert np.all(np.asarray(sol.X)[2] == 0) and np.all(np.asarray(sol.X)[:, 2] == 0)
    sub = flows.solve_sdcp(jnp.asarray(B[:2, :2]), jnp.asarray(G[:2, :2, :2, :2]), 300)
    np.testing.assert_allclose(np.asarray(sol.X)[:2, :2], sub.X, atol=1e-8)
    warm = flows.solve_sdcp(jnp.asarray(B), jnp.asarray(G), 3, X0=jnp.asarray(X))
    np.testing.assert_allclose(warm.X, X, atol=1e-10)


def test_one_unstable_eigenvalue_gives_the_closed_form(x64):
    """k = 1 at eta = 2 / lambda_max (dense): the SDCP's X equals sigma^2 =
    2 <-grad L, grad S> / ||grad S||^2 (grad S = grad_w u^T H u, dense), rel 1e-6, and
    the flow keeps the sharpness still: <grad S, dw/dt> ~ 0."""
    for seed in range(6):  # a point where the sharpness is rising (<-grad L, grad S> > 0)
        L, w = problem(seed)
        H = np.asarray(jax.jit(jax.hessian(L))(w))
        lam, V = np.linalg.eigh(H)
        u = jnp.asarray(V[:, -1])
        grad_S = jax.jit(jax.grad(lambda p: u @ jax.hessian(L)(p) @ u))(w)
        if float(jnp.vdot(-jax.grad(L)(w), grad_S)) > 0:
            break
    lr = 2.0 / lam[-1]
    v = jax.jit(lambda w: flows.central_velocity(L, w, lr, u[None], jnp.zeros((1, 1)), jax.random.key(0), 1e-3,
                                                 lanczos_iters=w.shape[0], solver_iters=50))(w)
    np.testing.assert_allclose(v.values[0], lam[-1], rtol=1e-8)
    sigma2 = flows.single_sigma2(jax.grad(L)(w), grad_S)
    assert float(sigma2) > 0
    np.testing.assert_allclose(v.sdcp.X[0, 0], sigma2, rtol=1e-6)
    assert abs(float(jnp.vdot(grad_S, v.dw))) < 1e-8 * float(jnp.linalg.norm(grad_S) * jnp.linalg.norm(v.dw))
    # k = 2 with threshold 0.99: the second eigenvalue (below 0.99 * 2/eta) may not
    # oscillate, so X is the same one-eigenvalue answer, padded with zeros
    assert lr * lam[-2] < 2 * 0.99
    U2 = jnp.asarray(V[:, [-1, -2]].T)
    v2 = jax.jit(lambda w: flows.central_velocity(L, w, lr, U2, jnp.zeros((2, 2)), jax.random.key(0), 1e-3,
                                                  lanczos_iters=w.shape[0], solver_iters=50, threshold=0.99))(w)
    np.testing.assert_allclose(v2.sdcp.X[0, 0], sigma2, rtol=1e-6)
    assert float(v2.sdcp.X[1, 1]) == 0 and float(v2.sdcp.X[0, 1]) == 0


def small_flow(**kw):
    model = models.mlp((3, 8, 8, 1), "silu")
    x = jax.random.normal(jax.random.key(1), (32, 3))
    y = jax.random.normal(jax.random.key(2), (32, 1))
    options = dict(lr=0.3, steps=12, every=4, k=2, substeps=2, stable_substeps=4, solver_iters=20)
    return flows.flow_simulation(model, data.Dataset(x, y), "mse", **{**options, **kw})


def test_a_flow_alone_equals_the_same_flow_in_a_vmapped_batch_of_16():
    """4 seeds x 4 step sizes as one vmapped program: each run's records equal the run
    alone (rel 1e-5: the batched program may round float32 sums differently), and the
    compiled advance has no host callback (the SDCP is solved in the program)."""
    sim = small_flow()
    state, _ = sim.init(jax.random.key(0), {"lr": 0.3}, sim.data)
    jaxpr = str(jax.make_jaxpr(lambda s: sim.advance(s, sim.data, 1))(state))
    assert "callback" not in jaxpr and "eigh" in jaxpr
    lrs = [0.1, 0.3, 0.6, 1.0]
    ds = sweep.sweep(sim, grid={"lr": lrs}, seeds=4, strategy="vmap")
    assert ds.loss.sizes == {"seed": 4, "lr": 4, "step": 4} and ds.eigenvalues.sizes["eig"] == 2
    run = jax.jit(sim.run)
    for seed, lr in [(0, 0.1), (2, 0.6), (3, 1.0)]:
        alone = run(jax.random.fold_in(jax.random.key(0), seed), {"lr": lr})
        for name in ("loss", "predicted_loss", "sharpness", "discrete_loss", "distance_central", "distance_stable"):
            np.testing.assert_allclose(ds[name].sel(seed=seed, lr=lr), alone[name], rtol=1e-5, atol=1e-7,
                                       err_msg=name)
    assert not ds.diverged.any()


def test_bad_flow_settings_are_config_errors_before_compiling():
    for kw, field in [({"k": 0}, "k"), ({"threshold": 1.5}, "threshold"), ({"substeps": 0}, "substeps"),
                      ({"k": 3, "lanczos_iters": 2}, "lanczos_iters"), ({"lr": -0.1}, "lr")]:
        with pytest.raises(ConfigError, match=field):
            small_flow(**kw)
