"""The RMSProp central flow (engine.flows, optimizer="rmsprop") against dense float64
computations on a small swish MLP: the preconditioned one-unstable-eigenvalue closed
form keeps the preconditioned sharpness still (finite differences of a dense eigvalsh),
the SDCP of `rmsprop_velocity` (k = 3) reproduces it, and with beta2 = 1, eps = 0,
nu0 = 1 (P = I) the whole simulation equals the GD one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import data, flows, models, sweep
from engine.errors import ConfigError
from tests.test_flows import problem


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


BETA2, EPS = 0.9, 1e-8


def preconditioned_point():
    """(L, w, nu, dense H) at a seed where the closed form is positive (the preconditioned
    sharpness rises under the stable flow); nu = grad L^2 + 1e-3 (a positive second moment).
    Seed 7 is the first of 0..7 where it is (searched once; the loop keeps the search)."""
    for seed in range(7, 12):
        L, w = problem(seed)
        g = jax.grad(L)(w)
        nu = g * g + 1e-3
        H = np.asarray(jax.jit(jax.hessian(L))(w))
        d = np.asarray(jax.lax.rsqrt(jnp.sqrt(nu) + EPS))
        mu, V = np.linalg.eigh(d[:, None] * H * d[None, :])
        u = jnp.asarray(d * V[:, -1])
        lr = 2.0 / mu[-1]
        if float(flows.single_sigma2_rmsprop(L, w, nu, lr, BETA2, EPS, u)) > 0:
            return L, w, nu, H, mu, V, u, lr
    raise AssertionError("no seed with a rising preconditioned sharpness")


def sharpness(L, w, nu):
    d = jax.lax.rsqrt(jnp.sqrt(nu) + EPS)
    return jnp.linalg.eigvalsh(d[:, None] * jax.hessian(L)(w) * d[None, :])[-1]


def test_preconditioned_closed_form_keeps_the_preconditioned_sharpness_still(x64):
    """At eta = 2 / mu_max (dense), the closed form sigma^2 along the generalized top
    eigenvector u (u^T P u = 1) in dw/dt = -eta P^-1 [grad L + sigma^2/2 grad S],
    d nu/dt = (1 - beta2) [grad L^2 + diag(H Sigma H) - nu] makes d/dt mu_max(P^-1/2 H
    P^-1/2) vanish: central differences (h = 1e-5) of a dense eigvalsh give |dS/dt| <
    1e-6 x its value at sigma = 0 (measured: ~1e-9)."""
    L, w, nu, H, mu, V, u, lr = preconditioned_point()
    P = jnp.sqrt(nu) + EPS
    sigma2 = float(flows.single_sigma2_rmsprop(L, w, nu, lr, BETA2, EPS, u))
    g = jax.grad(L)(w)
    grad_S = jax.grad(lambda p: u @ jax.hessian(L)(p) @ u)(w)
    Hu = jnp.asarray(H) @ u

    def rate(s2):
        dw = -lr * (g + 0.5 * s2 * grad_S) / P
        dnu = (1 - BETA2) * (g * g + s2 * Hu * Hu - nu)
        h = 1e-5
        S = jax.jit(sharpness, static_argnums=0)
        return float((S(L, w + h * dw, nu + h * dnu) - S(L, w - h * dw, nu - h * dnu)) / (2 * h))

    still, free = rate(sigma2), rate(0.0)
    assert free > 0 and abs(still) < 1e-6 * free, (sigma2, still, free)


def test_rmsprop_sdcp_solves_to_the_closed_form(x64):
    """rmsprop_velocity with k = 3 (full Lanczos, 300 ADMM iterations, dt = 1e-6) at
    eta = 2 / mu_max: its Ritz values are the dense preconditioned eigenvalues (rel 1e-8),
    X = sigma^2 e1 e1^T with sigma^2 the closed form (rel 1e-6), and dw/dt, d nu/dt are
    the dense formulas. The closed form is the dt -> 0 limit: measured, X_11 is off by
    rel 7e-5 at dt = 1e-3 and 6% at dt = 1 (the Euler step's dA/dt term lets the second
    eigenvector carry a little variance), ~1e-8 at dt = 1e-6; with k = 1 it is exact."""
    L, w, nu, H, mu, V, u, lr = preconditioned_point()
    n = w.shape[0]
    V3 = jnp.asarray(V[:, [-1, -2, -3]].T)
    v = jax.jit(lambda w: flows.rmsprop_velocity(L, w, nu, lr, BETA2, EPS, V3, jnp.zeros((3, 3)), jax.random.key(0),
                                                 1e-6, lanczos_iters=n, solver_iters=300))(w)
    np.testing.assert_allclose(v.values, mu[[-1, -2, -3]], rtol=1e-8)
    sigma2 = float(flows.single_sigma2_rmsprop(L, w, nu, lr, BETA2, EPS, u))
    X = np.asarray(v.sdcp.X)
    np.testing.assert_allclose(X[0, 0], sigma2, rtol=1e-6)
    assert np.abs(X).sum() - abs(X[0, 0]) < 1e-6 * sigma2 and float(v.sdcp.residual) < 1e-9
    P = jnp.sqrt(nu) + EPS
    grad_S = jax.grad(lambda p: u @ jax.hessian(L)(p) @ u)(w)
    g = jax.grad(L)(w)
    np.testing.assert_allclose(v.dw, -lr * (g + 0.5 * sigma2 * grad_S) / P, rtol=1e-6, atol=1e-12)
    Hu = jnp.asarray(H) @ u
    np.testing.assert_allclose(v.dnu, (1 - BETA2) * (g * g + sigma2 * Hu * Hu - nu), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(v.variance, sigma2 * jnp.vdot(u, u), rtol=1e-6)


def small(optimizer, **kw):
    model = models.mlp((3, 8, 8, 1), "silu")
    x = jax.random.normal(jax.random.key(1), (32, 3))
    y = jax.random.normal(jax.random.key(2), (32, 1))
    options = dict(lr=0.3, steps=12, every=4, k=2, substeps=2, stable_substeps=4, solver_iters=20)
    return flows.flow_simulation(model, data.Dataset(x, y), "mse", optimizer=optimizer, **{**options, **kw})


def test_rmsprop_with_p_identity_is_the_gd_flow(x64):
    """beta2 = 1, eps = 0, nu0 = 1: nu stays 1, P = I, and every record of the RMSProp
    simulation (discrete run, stable flow, central flow, SDCP) equals the GD one's, rel
    1e-6 (measured: ~1e-13), at an eta where the central flow oscillates (eta lambda_0 = 2.03)."""
    gd = jax.jit(small("gd", lr=1.0).run)(jax.random.key(3), {"lr": 1.0})
    rms = jax.jit(small("rmsprop", lr=1.0, beta2=1.0, eps=0.0, nu0=1.0).run)(jax.random.key(3),
                                                                              {"lr": 1.0, "beta2": 1.0, "eps": 0.0})
    assert float(np.max(gd["oscillation_variance"])) > 0
    for name in ("loss", "predicted_loss", "oscillation_variance", "sharpness", "discrete_loss",
                 "discrete_sharpness", "stable_loss", "stable_sharpness", "distance_central", "distance_stable"):
        np.testing.assert_allclose(rms[name], gd[name], rtol=1e-6, atol=1e-12, err_msg=name)


def test_rmsprop_central_flow_holds_the_preconditioned_edge_and_bad_settings_fail():
    """float32, beta2 0.9, eta 0.03, nu0 = grad L(theta_0)^2: the discrete RMSProp run's
    preconditioned sharpness passes 2/eta, and the central flow's is at 2/eta within 2.5%
    at steps 8 and 12, with a positive oscillation variance from step 4 (measured in
    float32: eta mu = 2.19, 2.012, 2.018 at steps 4, 8, 12; in float64 2.03, 2.01, 2.00;
    the discrete run's passes 4.5); bad optimizer settings fail early."""
    out = jax.jit(small("rmsprop", beta2=0.9, eps=1e-8).run)(jax.random.key(0), {"lr": 0.03})
    edge = 0.03 * np.asarray(out["sharpness"])[2:]
    assert np.all(np.abs(edge - 2) < 0.05), edge
    assert np.all(np.asarray(out["oscillation_variance"])[1:] > 0)
    assert np.max(0.03 * np.asarray(out["discrete_sharpness"])) > 2.5, out["discrete_sharpness"]
    for kw, field in [({"optimizer": "adam"}, "optimizer"), ({"optimizer": "rmsprop", "beta2": 1.5}, "beta2"),
                      ({"optimizer": "rmsprop", "eps": -1.0}, "eps"), ({"optimizer": "rmsprop", "nu0": 0.0}, "nu0")]:
        with pytest.raises(ConfigError, match=field):
            small(**kw)


def test_beta2_is_traced_a_sweep_of_two_equals_the_runs_alone():
    """beta2 in {0.9, 0.99} as one vmapped program (no host callback in it), the second
    run equal to itself swept alone (rel 1e-5: float32 batching may round sums
    differently), and the two runs differ. (A GD flow alone equals its batch of 16 in
    tests/test_flows.py; this is the same machinery with beta2 traced.)"""
    sim = small("rmsprop", lr=0.03, steps=8)
    state, _ = sim.init(jax.random.key(0), {"lr": 0.03}, sim.data)
    assert "callback" not in str(jax.make_jaxpr(lambda s: sim.advance(s, sim.data, 1))(state))
    ds = sweep.sweep(sim, grid={"beta2": [0.9, 0.99]}, seeds=1, strategy="vmap")
    alone = sweep.sweep(sim, grid={"beta2": [0.99]}, seeds=1, strategy="vmap")
    for name in ("loss", "predicted_loss", "sharpness", "discrete_loss", "distance_central"):
        np.testing.assert_allclose(ds[name].sel(beta2=0.99), alone[name].sel(beta2=0.99), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    assert not np.allclose(ds.discrete_loss.sel(beta2=0.9), ds.discrete_loss.sel(beta2=0.99))
