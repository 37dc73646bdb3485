"""Central flows: the time-averaged trajectory of gradient descent at the edge of
stability, as a pure simulation that jits and vmaps like `engine.simulate`.

Cohen, Damian, Talwalkar, Kolter & Lee 2025, "Understanding Optimization in Deep
Learning with Central Flows" (ICLR). GD with step size eta on a loss L oscillates, at the
edge of stability, along the top Hessian eigenvectors; its time average w(t) follows the
*central flow*

    dw/dt = -eta [grad L(w) + 1/2 grad_w <Sigma(t), H(w)>],    Sigma = U^T X U,

U [k, n] the top-k eigenvectors of H (rows), X [k, k] PSD the covariance of the
oscillation in that basis, the solution of the semidefinite complementarity problem
(SDCP) of one Euler step of length dt (in GD steps),

    0 <= X  _|_  M(X) = U (A + dt dA/dt) U^T >= 0,    A = 2/eta I - H,

which keeps eta * lambda_i(H) <= 2 (the edge) with equality where X oscillates. As
dA/dt = -D^3L[dw/dt] is affine in X, M(X) = B + Lin(X) with

    g_ij  = grad_w (u_i^T H(w) u_j) = D^3L(w)[u_i, u_j, .]      (nested jvp, `pair_gradients`)
    B_ij  = (2/eta - lambda_i) delta_ij + dt eta <g_ij, grad L>
    Lin(X)_ij = dt eta / 2 sum_ab <g_ij, g_ab> X_ab              (a Gram operator: PSD)

so the SDCP is the KKT system of the convex QP  min_{X PSD} <B, X> + 1/2 <X, Lin X>,
solved here inside JAX by ADMM on the k x k PSD cone (`solve_sdcp`; projection = eigh,
clip negatives), a fixed number of iterations, warm-started from the previous step's X
rotated into the new basis; its natural KKT residual ||X - Pi_PSD(X - M(X))|| is
recorded. The reference implementation (`central_flows_jax`) solves the same QP with
cvxpy through a host callback, which cannot be vmapped; ours has no callback (tested on
the jaxpr), so a sweep of runs is one program. With one unstable eigenvalue the SDCP
has the closed form sigma^2 = 2 <-grad L, grad S> / ||grad S||^2 (`single_sigma2`), S
the sharpness (dt -> 0), which keeps dS/dt = 0.

`flow_simulation(model, data, loss, ...)` builds an `engine.simulate.Simulation` whose
run advances, side by side from the same theta_0 and GD step size (hyperparameter
"lr"), three trajectories: the discrete GD run, the *stable flow* (gradient flow
dw/dt = -eta grad L, `stable_substeps` Euler substeps per GD step) and the central
flow (`substeps` Euler substeps per GD step, as the reference). `engine.sweep.sweep`
runs it like any simulation: seeds x lr x init_scale in one compiled program. Why a
`Simulation` and not a new kind of object: the sweep machinery (chunks, devices,
checkpoints, labelled results) reads only init / advance / flags from it, so the flows
get all of it for free; the state is a `FlowState`, not a `RunState`.

Records (every `every` GD steps), all at the GD step t:
    loss, sharpness, eigenvalues [eig]   L, lambda_1 and the top-k Ritz values along the
                                         central flow
    predicted_loss                       the predicted time average of GD's loss,
                                         L(w) + 1/2 <Sigma, H(w)> (= L + tr(Sigma)/eta on
                                         the edge, where the u_i with X_ii > 0 have
                                         eta lambda_i = 2; the paper's formula)
    oscillation_variance                 tr Sigma = tr X, the predicted E||w_GD - w||^2
    unstable                             how many eigenvalues X oscillates along (X_ii > 0)
    sdcp_residual                        the SDCP's KKT residual, relative to 1 + ||B||
    eig_residual                         max Lanczos residual of the tracked eigenpairs
    discrete_loss, discrete_sharpness    the GD run
    stable_loss, stable_sharpness        the stable flow
    distance_central, distance_stable    ||w_GD - w_central||, ||w_GD - w_stable||
Tracked eigenvalues: a fixed k (warm-started Lanczos, `engine.curvature`), of which
with `threshold=f` only those with eta lambda_i >= 2 f may oscillate (a mask: the shapes
stay fixed under vmap); None lets all k.

RMSProp (`optimizer="rmsprop"`; Cohen et al. 2025, section on RMSProp). The discrete
run is RMSProp without momentum or bias correction, in PyTorch's order: nu <- beta2 nu +
(1 - beta2) g^2, then w <- w - eta g / P, P = sqrt(nu) + eps, nu_0 = grad L(theta_0)^2
(`nu0`: a constant instead). It is stable while the *preconditioned* sharpness, the top
eigenvalue mu of P^-1 H (computed as the symmetric P^-1/2 H P^-1/2 by Lanczos), is
<= 2/eta; its central flow in (w, nu) is

    dw/dt  = -eta P^-1 [grad L + 1/2 grad_w <Sigma, H>],
    dnu/dt = (1 - beta2) [grad L^2 + diag(H Sigma H) - nu],

E[g^2] over the oscillation being grad L^2 + diag(H Sigma H). Our choices where the
paper leaves room: the rate (1 - beta2) per step (the discrete recursion's; no 1/beta2
factor), and diag(H Sigma H) replaced by its value on the edge, (2/eta)^2 P^2 diag(Sigma)
(H u = mu P u with eta mu = 2 wherever Sigma is nonzero), which keeps the SDCP a convex QP.
Sigma = U^T X U in the generalized eigenvectors u_i = P^-1/2 v_i (u_i^T P u_j = delta_ij,
u_i^T H u_j = mu_i delta_ij), and the SDCP is the GD one for A = 2P/eta - H seen through
U, d/dt moving both w and nu (both affine in X; `rmsprop_terms`):

    B_ij = (2/eta - mu_i) delta_ij + dt [eta <g_ij, P^-1 grad L> + 2/eta <u_i u_j, P' dnu0>]
    Lin_ijab = dt [eta/2 <g_ij, P^-1 g_ab> + 2/eta <u_i u_j, P' q u_a u_b>]    (PSD)

with P' = 1 / (2 sqrt nu) = dP/dnu, dnu0 = (1 - beta2)(grad L^2 - nu), q = (1 - beta2)
(2/eta)^2 P^2; solved by the same `solve_sdcp` (scaled by eta). One unstable eigenvalue:
sigma^2 = -b/a with b, a the dt -> 0 coefficients (`single_sigma2_rmsprop`), the variance
that keeps mu constant. The stable flow integrates (w, nu) with sigma = 0. With
beta2 = 1, eps = 0, nu0 = 1 (P = I) all of it is the GD flow (tested). The records are
the GD ones with sharpness / eigenvalues / discrete_sharpness / stable_sharpness the
preconditioned ones (each trajectory with its own nu), predicted_loss = L +
1/2 sum_i X_ii mu_i (= L + 1/2 <Sigma, H>), oscillation_variance = tr Sigma =
sum_ab X_ab <u_a, u_b>. Hyperparameters "beta2" and "eps" are traced (sweepable in
one program). Adam (momentum) is not built.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from engine.curvature import _eigh, hvp, lanczos
from engine.data import Dataset, check_dataset
from engine.errors import FINITE, POSITIVE, UNIT, Range, require
from engine.init import Initializer, scaled
from engine.losses import loss_function
from engine.models import Model, layers
from engine.probes import Probe
from engine.simulate import Simulation

VARIABLES = {"loss": (), "predicted_loss": (), "oscillation_variance": (), "sharpness": (), "eigenvalues": ("eig",),
             "unstable": (), "sdcp_residual": (), "eig_residual": (), "discrete_loss": (),
             "discrete_sharpness": (), "stable_loss": (), "stable_sharpness": (), "distance_central": (),
             "distance_stable": ()}


# ----------------------------------------------------------------------------- derivatives
def third_derivative(loss_fn: Callable, w, u, v):
    """grad_w (u^T H(w) v) = D^3L(w)[u, v, .]: [n], for flat w, u, v [n]; the jvp along
    u of the Hessian-vector product H(w) v (forward over forward over reverse)."""
    return jax.jvp(lambda p: hvp(loss_fn, p, v), (w,), (u,))[1]


def pair_gradients(loss_fn: Callable, w, U):
    """g [k, k, n], g_ij = grad_w (u_i^T H(w) u_j) for the rows u_i of U [k, n]; the
    k(k+1)/2 pairs i <= j are computed, the rest mirrored."""
    k = U.shape[0]
    i, j = np.triu_indices(k)
    upper = jax.vmap(lambda a, b: third_derivative(loss_fn, w, a, b))(U[i], U[j])
    g = jnp.zeros((k, k, w.shape[0]), w.dtype).at[i, j].set(upper)
    return g.at[j, i].set(upper)


def single_sigma2(grad_loss, grad_sharpness):
    """sigma^2 = 2 <-grad L, grad S> / ||grad S||^2 (floored at 0): the oscillation
    variance along the one unstable eigenvector that keeps dS/dt = 0 under
    dw/dt = -eta [grad L + sigma^2/2 grad S] (Cohen et al. 2025, one unstable
    eigenvalue). Flat vectors [n]; scalar."""
    return jnp.maximum(2.0 * jnp.vdot(-grad_loss, grad_sharpness) / jnp.vdot(grad_sharpness, grad_sharpness), 0.0)


# ----------------------------------------------------------------------------- the SDCP
class SDCPSolution(NamedTuple):
    """X: [k, k] PSD solution; M: [k, k] = B + Lin(X); residual: scalar,
    ||X - Pi_PSD(X - M)||_F / (1 + ||B||_F), zero exactly at the SDCP's solution."""
    X: jax.Array
    M: jax.Array
    residual: jax.Array


def _svec_basis(k: int, dtype):
    """S [k*k, k(k+1)/2]: vec(X) = S svec(X), svec an isometry of symmetric matrices
    (off-diagonal entries scaled by sqrt 2)."""
    i, j = np.triu_indices(k)
    S = np.zeros((k * k, len(i)))
    S[i * k + j, np.arange(len(i))] = np.where(i == j, 1.0, np.sqrt(0.5))
    S[j * k + i, np.arange(len(i))] = np.where(i == j, 1.0, np.sqrt(0.5))
    return jnp.asarray(S, dtype)


def project_psd(X):
    """The nearest PSD matrix to the symmetric part of X [k, k] (Frobenius): negative
    eigenvalues clipped."""
    lam, V = _eigh(0.5 * (X + X.T))
    return (V * jnp.maximum(lam, 0.0)) @ V.T


def sdcp_residual(X, M, B):
    """||X - Pi_PSD(X - M)||_F / (1 + ||B||_F): the natural residual of the SDCP
    0 <= X _|_ M >= 0 (zero iff X >= 0, M >= 0 and <X, M> = 0)."""
    return jnp.linalg.norm(X - project_psd(X - M)) / (1.0 + jnp.linalg.norm(B))


def solve_sdcp(B, G, iters: int = 100, X0=None, mask=None) -> SDCPSolution:
    """0 <= X _|_ B + Lin(X) >= 0, Lin(X)_ij = sum_ab G[i, j, a, b] X_ab, for a symmetric
    B [k, k] and a PSD operator G [k, k, k, k] (a Gram tensor <g_ij, g_ab>), as the convex
    QP min_{X PSD} <B, X> + 1/2 <X, Lin X> by ADMM (X = Z, Z PSD): `iters` iterations of
    x <- (Q + rho)^-1 (rho (z - w) - b) in svec coordinates (Q the operator there), Z <-
    Pi_PSD(X + W), W <- W + X - Z, with rho the geometric mean of Q's extreme eigenvalues.
    X0: warm start [k, k] (the dual starts at -M(X0)/rho, its value at the optimum);
    mask [k] bool: entries whose row or column is masked are held at 0. Fixed iteration
    count and no host callback, so it jits and vmaps; converges for any PSD G (ADMM on a
    convex QP), linearly, fastest when Q is well conditioned."""
    k = B.shape[0]
    dtype = B.dtype
    S = _svec_basis(k, dtype)
    m = jnp.ones(k, bool) if mask is None else mask
    mm = (m[:, None] & m[None, :]).astype(dtype)
    ms = S.T @ mm.reshape(-1) > 0.5  # svec coordinates that may move
    B = 0.5 * (B + B.T) * mm
    Q = S.T @ G.reshape(k * k, k * k) @ S
    Q = 0.5 * (Q + Q.T) * (ms[:, None] & ms[None, :])
    mu_top = jnp.max(jnp.abs(jnp.diag(Q)))
    # frozen coordinates: decoupled, at the largest live curvature (so they leave rho alone)
    Q = Q + jnp.diag(jnp.where(ms, 0.0, jnp.where(mu_top > 0, mu_top, 1.0)))
    mu, V = _eigh(Q)
    top = jnp.maximum(mu[-1], jnp.finfo(dtype).tiny)
    rho = jnp.sqrt(top * jnp.maximum(mu[0], 1e-8 * top))
    rho = jnp.where(mu[-1] > 0, rho, 1.0)
    solve = lambda r: V @ ((V.T @ r) / (mu + rho))
    b = S.T @ B.reshape(-1)
    vec = lambda X: S.T @ X.reshape(-1)
    mat = lambda x: (S @ x).reshape(k, k)
    lin = lambda X: mat(Q @ vec(X)) * mm  # masked coordinates carry no curvature in M

    Z = jnp.zeros_like(B) if X0 is None else project_psd(X0 * mm)
    W = -(B + lin(Z)) / rho

    def step(_, carry):
        Z, W = carry
        X = mat(solve(rho * vec(Z - W) - b))
        Znew = project_psd((X + W) * mm)
        return Znew, W + X - Znew

    Z, W = jax.lax.fori_loop(0, iters, step, (Z, W))
    M = B + lin(Z)
    return SDCPSolution(Z, M, sdcp_residual(Z, M, B))


# ----------------------------------------------------------------------------- one substep
class Velocity(NamedTuple):
    """What the central flow sees at w: loss L, grad [n], eig values [k] and vectors
    U [k, n] (rows, descending), their Lanczos residual (max), the SDCP solution and
    dw/dt [n]."""
    loss: jax.Array
    grad: jax.Array
    values: jax.Array
    vectors: jax.Array
    eig_residual: jax.Array
    sdcp: SDCPSolution
    dw: jax.Array
    dnu: jax.Array | None = None       # RMSProp: d nu/dt [n]; None for GD
    variance: jax.Array | None = None  # RMSProp: tr Sigma = sum_ab X_ab <u_a, u_b>; GD: tr X


def central_velocity(loss_fn: Callable, w, lr, U_prev, X_prev, key, dt, lanczos_iters: int,
                     solver_iters: int, threshold: float | None = None) -> Velocity:
    """dw/dt of the GD central flow at flat w [n] (see the module docstring), the top-k
    eigenpairs by Lanczos warm-started from U_prev [k, n], the SDCP of an Euler step of
    length dt warm-started from X_prev [k, k] (in U_prev's basis, rotated into the new
    one). The SDCP is scaled by eta: B' = eta B = diag(2 - eta lambda) + dt eta^2 <g, grad L>,
    Lin' = dt eta^2 / 2 G; same X."""
    k = U_prev.shape[0]
    L, g = jax.value_and_grad(loss_fn)(w)
    eig = lanczos(lambda v: hvp(loss_fn, w, v), _warm(U_prev, key), lanczos_iters, k)
    U = eig.vectors
    gij = pair_gradients(loss_fn, w, U)  # [k, k, n]
    G = jnp.einsum("ijn,abn->ijab", gij, gij)
    B = jnp.diag(2.0 - lr * eig.values) + dt * lr**2 * jnp.einsum("ijn,n->ij", gij, g)
    R = U @ U_prev.T  # old basis -> new
    mask = None if threshold is None else lr * eig.values >= 2.0 * threshold
    sol = solve_sdcp(B, 0.5 * dt * lr**2 * G, solver_iters, R @ X_prev @ R.T, mask)
    dw = -lr * (g + 0.5 * jnp.einsum("ij,ijn->n", sol.X, gij))
    return Velocity(L, g, eig.values, U, jnp.max(eig.residuals), sol, dw)


def rmsprop_terms(loss_fn: Callable, w, nu, lr, beta2, eps, U, mu, dt):
    """The preconditioned SDCP's pieces at (w, nu) for the generalized eigenvectors U
    [k, n] (rows u_i, H u_i = mu_i P u_i, u_i^T P u_i = 1), unscaled (module docstring):
    (B [k, k], Lin [k, k, k, k], g_ij [k, k, n], c_ij = u_i * u_j [k, k, n], dnu0 [n] the
    X-free part of d nu/dt, q [n] with d nu/dt = dnu0 + q * diag(Sigma)); mu [k] the
    preconditioned eigenvalues."""
    P = jnp.sqrt(nu) + eps
    half_root = 0.5 / jnp.maximum(jnp.sqrt(nu), jnp.finfo(w.dtype).tiny)  # dP/dnu
    L, g = jax.value_and_grad(loss_fn)(w)
    gij = pair_gradients(loss_fn, w, U)
    c = U[:, None, :] * U[None, :, :]
    dnu0 = (1.0 - beta2) * (g * g - nu)
    q = (1.0 - beta2) * (2.0 / lr) ** 2 * P * P
    B = (jnp.diag(2.0 / lr - mu) + dt * (lr * jnp.einsum("ijn,n->ij", gij, g / P)
                                         + 2.0 / lr * jnp.einsum("ijn,n->ij", c, half_root * dnu0)))
    Lin = dt * (0.5 * lr * jnp.einsum("ijn,abn,n->ijab", gij, gij, 1.0 / P)
                + 2.0 / lr * jnp.einsum("ijn,abn,n->ijab", c, c, half_root * q))
    return B, Lin, gij, c, dnu0, q


def single_sigma2_rmsprop(loss_fn: Callable, w, nu, lr, beta2, eps, u):
    """The preconditioned one-unstable-eigenvalue closed form: sigma^2 = max(-b / a, 0),
    dt -> 0, with d/dt [u^T (2P/eta - H) u] = b + a sigma^2 for the generalized top
    eigenvector u [n] (u^T P u = 1) under the RMSProp central flow, i.e. the oscillation
    variance along u that keeps the preconditioned sharpness at 2/eta (on the edge,
    eta mu = 2). Scalar."""
    mu = jnp.vdot(u, hvp(loss_fn, w, u))
    B, Lin, *_ = rmsprop_terms(loss_fn, w, nu, lr, beta2, eps, u[None], mu[None], 1.0)
    return jnp.maximum(-(B[0, 0] - (2.0 / lr - mu)) / Lin[0, 0, 0, 0], 0.0)


def rmsprop_velocity(loss_fn: Callable, w, nu, lr, beta2, eps, V_prev, X_prev, key, dt, lanczos_iters: int,
                     solver_iters: int, threshold: float | None = None) -> Velocity:
    """(dw/dt, d nu/dt) of the RMSProp central flow at (w [n], nu [n]) (module docstring):
    the top-k eigenpairs of the symmetric preconditioned Hessian P^-1/2 H P^-1/2 by
    Lanczos warm-started from V_prev [k, n] (its eigenvectors v_i; `values` are its
    eigenvalues mu_i, `vectors` the v_i), the SDCP in the basis u_i = P^-1/2 v_i, scaled
    by eta like the GD one."""
    k = V_prev.shape[0]
    P = jnp.sqrt(nu) + eps
    d = jax.lax.rsqrt(P)
    L, g = jax.value_and_grad(loss_fn)(w)
    eig = lanczos(lambda v: d * hvp(loss_fn, w, d * v), _warm(V_prev, key), lanczos_iters, k)
    V = eig.vectors
    U = V * d
    B, Lin, gij, c, dnu0, q = rmsprop_terms(loss_fn, w, nu, lr, beta2, eps, U, eig.values, dt)
    R = V @ V_prev.T
    mask = None if threshold is None else lr * eig.values >= 2.0 * threshold
    sol = solve_sdcp(lr * B, lr * Lin, solver_iters, R @ X_prev @ R.T, mask)
    X = sol.X
    dw = -lr * (g + 0.5 * jnp.einsum("ij,ijn->n", X, gij)) / P
    dnu = dnu0 + q * jnp.einsum("ab,abn->n", X, c)
    return Velocity(L, g, eig.values, V, jnp.max(eig.residuals), sol, dw, dnu, jnp.sum(X * (U @ U.T)))


def _warm(U_prev, key):
    """The Lanczos start block: the previous eigenvectors with a little noise on the top
    one (`engine.curvature._start_block`), or random rows when they are unusable."""
    k, n = U_prev.shape
    noise = jax.random.normal(key, (k, n), U_prev.dtype) / jnp.sqrt(n)
    usable = jnp.all(jnp.isfinite(U_prev)) & (jnp.linalg.norm(U_prev) > 0)
    return jnp.where(usable, jnp.where(usable, U_prev, 0.0) + 1e-3 * noise.at[1:].set(0.0), noise)


def top_eigenpair(loss_fn: Callable, w, v_prev, key, iters: int, d=None):
    """(lambda_max, v [1, n]) by Lanczos warm-started from v_prev [1, n]; of the
    symmetric preconditioned Hessian d H d when d [n] (= P^-1/2) is given."""
    op = (lambda v: hvp(loss_fn, w, v)) if d is None else (lambda v: d * hvp(loss_fn, w, d * v))
    eig = lanczos(op, _warm(v_prev, key), iters, 1)
    return eig.values[0], eig.vectors


# ----------------------------------------------------------------------------- the run
class FlowState(NamedTuple):
    """One run of the three trajectories; under a sweep every leaf has a leading [runs]
    axis. central, discrete, stable: flat params [n]; at: the central flow's `Velocity`
    at `central` (its eigenvectors and X warm-start the next solve; the records read it,
    so a program holds one copy of the solve); v_discrete,
    v_stable: [1, n] warm starts of the other two sharpness estimates; lr: eta;
    snapshots: None (the `simulate` contract); step: int32; key; diverged, converged:
    bool; diverged_step, converged_step: int32, -1 if never (converged stays False);
    nu, hyper: RMSProp's second moments and (beta2, eps), None for GD."""
    central: jax.Array
    discrete: jax.Array
    stable: jax.Array
    at: Velocity
    v_discrete: jax.Array
    v_stable: jax.Array
    lr: jax.Array
    snapshots: None
    step: jax.Array
    key: jax.Array
    diverged: jax.Array
    diverged_step: jax.Array
    converged: jax.Array
    converged_step: jax.Array
    nu: dict | None = None      # RMSProp: {"central", "discrete", "stable"} second moments [n]
    hyper: dict | None = None   # RMSProp: {"beta2", "eps"} scalars


def check_flow(k, substeps, stable_substeps, lanczos_iters, solver_iters, threshold, n_params: int) -> None:
    """ConfigError, before anything is traced, for flow settings that cannot work."""
    counts = {"k": k, "substeps": substeps, "stable_substeps": stable_substeps, "lanczos_iters": lanczos_iters,
              "solver_iters": solver_iters}
    for field, v in counts.items():
        require(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1, field, f"got {v!r}",
                "use an integer >= 1")
    require(k <= n_params, "k", f"k={k} exceeds the {n_params} parameters", f"use k <= {n_params}")
    require(k <= lanczos_iters <= n_params, "lanczos_iters", f"got {lanczos_iters} for k={k} and {n_params} "
            "parameters", f"use an integer in [{k}, {n_params}], e.g. {min(4 * k, n_params)}")
    require(threshold is None or (isinstance(threshold, (int, float)) and 0 < threshold <= 1), "threshold",
            f"got {threshold!r}", "use a fraction in (0, 1] of 2/eta (eigenvalues above it may oscillate), or None")


def flow_simulation(model: Model, data: Dataset, loss="mse", init: Initializer | None = None, *, lr: float = 0.1,
                    steps: int = 1000, every: int = 1, k: int = 4, substeps: int = 4, stable_substeps: int = 16,
                    lanczos_iters: int | None = None, solver_iters: int = 100,
                    threshold: float | None = None, optimizer: str = "gd", beta2: float = 0.99,
                    eps: float = 1e-8, nu0: float | None = None) -> Simulation:
    """The discrete GD run, its stable flow and its central flow side by side, as a
    `Simulation` (module docstring): hyperparameters "lr" (default `lr`) and the
    initializer's (default `engine.init.scaled`: "init_scale").

    loss: a name of `engine.losses.LOSSES` or f(y_pred, y) -> scalar; k: eigenpairs
    tracked; substeps / stable_substeps: Euler substeps per GD step of the central /
    stable flow; lanczos_iters: Hessian-vector products per eigen-solve (default 3k + 4,
    warm-started from the previous substep's vectors); solver_iters: ADMM iterations of
    the SDCP per substep; threshold: None, or a fraction f: only eigenvalues with
    eta lambda >= 2 f may oscillate.

    optimizer "rmsprop": the discrete run is RMSProp and the flows are its stable and
    central flows (module docstring), with hyperparameters "beta2" and "eps" (traced,
    defaults `beta2`, `eps`); nu0: None starts nu at grad L(theta_0)^2, a positive float
    at that constant (nu0=1, beta2=1, eps=0 is GD)."""
    require(optimizer in ("gd", "rmsprop"), "optimizer", f"got {optimizer!r}", "use 'gd' or 'rmsprop'")
    rms = optimizer == "rmsprop"
    require(nu0 is None or (isinstance(nu0, (int, float)) and not isinstance(nu0, bool) and nu0 > 0), "nu0",
            f"got {nu0!r}", "use None (grad L(theta_0)^2) or a positive float")
    if rms:
        require(beta2 in UNIT, "beta2", f"got {beta2!r}", "use a moving-average coefficient in [0, 1]")
        require(eps in Range(0), "eps", f"got {eps!r}", "use eps >= 0")
    require(isinstance(model, Model), "model", f"got {type(model).__name__}", "build one with engine.models.mlp(...)")
    check_dataset(data)
    init = scaled(model) if init is None else init
    require(isinstance(init, Initializer), "init", f"got {init!r}", "use a scheme from engine.init")
    for name in ("lr", "beta2", "eps") if rms else ("lr",):
        require(name not in init.defaults, "init", f"the initializer has a hyperparameter {name!r}", "rename it")
    loss_fn = loss_function(loss) if isinstance(loss, str) else loss
    require(callable(loss_fn), "loss", f"got {loss!r}", "use 'mse', 'cross_entropy' or a function")
    for field, v in (("steps", steps), ("every", every)):
        require(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1, field, f"got {v!r}",
                "use an integer >= 1")
    require(every <= steps, "every", f"every={every} is larger than steps={steps}", "use every <= steps")
    require(lr in POSITIVE, "lr", f"got {lr!r}", "use a positive step size")
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    n_params = int(sum(np.prod(l.shape) for l in jax.tree.leaves(params_shape)))
    lanczos_iters = min(3 * k + 4, n_params) if lanczos_iters is None else lanczos_iters
    check_flow(k, substeps, stable_substeps, lanczos_iters, solver_iters, threshold, n_params)
    record_steps = np.unique(np.minimum(np.arange(0, steps + every, every), steps))
    defaults = {**init.defaults, "lr": lr, **({"beta2": beta2, "eps": eps} if rms else {})}

    def unravel(flat):
        zeros = jax.tree.map(lambda l: jnp.zeros(l.shape, flat.dtype), params_shape)
        return ravel_pytree(zeros)[1](jnp.asarray(flat))

    def flat_loss(data):
        return lambda w: loss_fn(model.apply(unravel(w), data.x), data.y)

    def velocity(state, data, w, U, X, key, dt):
        return central_velocity(flat_loss(data), w, state.lr, U, X, key, dt, lanczos_iters, solver_iters, threshold)

    def rms_velocity(state, data, w, nu, V, X, key, dt):
        return rmsprop_velocity(flat_loss(data), w, nu, state.lr, state.hyper["beta2"], state.hyper["eps"], V, X,
                                key, dt, lanczos_iters, solver_iters, threshold)

    def root(state, nu):  # P^-1/2
        return jax.lax.rsqrt(jnp.sqrt(nu) + state.hyper["eps"])

    def measure(state, data):
        """The records at the state's step: the central flow's from the velocity cached
        at its point; the GD run's and the stable flow's sharpness by one eigen-solve,
        vmapped over both."""
        L = flat_loss(data)
        keys = jax.random.split(jax.random.fold_in(state.key, state.step), 2)
        v = state.at
        ws, vs = jnp.stack([state.discrete, state.stable]), jnp.stack([state.v_discrete, state.v_stable])
        if rms:
            ds = jnp.stack([root(state, state.nu["discrete"]), root(state, state.nu["stable"])])
            (s_d, s_s), (v_d, v_s) = jax.vmap(lambda w, v, key, d: top_eigenpair(L, w, v, key, lanczos_iters, d))(
                ws, vs, keys, ds)
        else:
            (s_d, s_s), (v_d, v_s) = jax.vmap(lambda w, v, key: top_eigenpair(L, w, v, key, lanczos_iters))(
                ws, vs, keys)
        X = v.sdcp.X
        rec = {"loss": v.loss, "predicted_loss": v.loss + 0.5 * jnp.sum(jnp.diag(X) * v.values),
               "oscillation_variance": v.variance if rms else jnp.trace(X), "sharpness": v.values[0], "eigenvalues": v.values,
               "unstable": jnp.sum(jnp.diag(X) > 1e-6 * jnp.maximum(jnp.trace(X), 1e-30)).astype(v.loss.dtype),
               "sdcp_residual": v.sdcp.residual, "eig_residual": v.eig_residual,
               "discrete_loss": L(state.discrete), "discrete_sharpness": s_d,
               "stable_loss": L(state.stable), "stable_sharpness": s_s,
               "distance_central": jnp.linalg.norm(state.discrete - state.central),
               "distance_stable": jnp.linalg.norm(state.discrete - state.stable)}
        dead = state.diverged & (state.diverged_step < state.step)
        rec = {name: jnp.where(dead, jnp.nan, value) for name, value in rec.items()}
        return state._replace(v_discrete=v_d, v_stable=v_s), rec

    def step(state, data):
        """One GD step of the discrete run, and one step's worth of both flows."""
        L = flat_loss(data)
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), 7)
        dt = 1.0 / substeps

        if rms:
            return rms_step(state, data, L, key, dt)

        def sub(carry, i):  # an Euler substep, then the velocity at its end
            w, at = carry
            w = w + dt * at.dw
            return (w, velocity(state, data, w, at.vectors, at.sdcp.X, jax.random.fold_in(key, i), dt)), None

        (central, at), _ = jax.lax.scan(sub, (state.central, state.at), jnp.arange(substeps))
        ds = 1.0 / stable_substeps
        stable = jax.lax.fori_loop(0, stable_substeps, lambda _, w: w - ds * state.lr * jax.grad(L)(w),
                                   state.stable)
        discrete = state.discrete - state.lr * jax.grad(L)(state.discrete)
        return finish(state, L, central, discrete, stable, at, None)

    def rms_step(state, data, L, key, dt):
        """One RMSProp step of the discrete run (nu <- beta2 nu + (1 - beta2) g^2, then
        w <- w - eta g / (sqrt(nu) + eps); no momentum, no bias correction), and one
        step's worth of its two flows (Euler on (w, nu))."""
        beta2, eps = state.hyper["beta2"], state.hyper["eps"]

        def sub(carry, i):
            w, nu, at = carry
            w, nu = w + dt * at.dw, nu + dt * at.dnu
            return (w, nu, rms_velocity(state, data, w, nu, at.vectors, at.sdcp.X, jax.random.fold_in(key, i),
                                        dt)), None

        (central, nu_c, at), _ = jax.lax.scan(sub, (state.central, state.nu["central"], state.at),
                                              jnp.arange(substeps))
        ds = 1.0 / stable_substeps

        def stable_sub(_, carry):
            w, nu = carry
            g = jax.grad(L)(w)
            return w - ds * state.lr * g / (jnp.sqrt(nu) + eps), nu + ds * (1.0 - beta2) * (g * g - nu)

        stable, nu_s = jax.lax.fori_loop(0, stable_substeps, stable_sub, (state.stable, state.nu["stable"]))
        g = jax.grad(L)(state.discrete)
        nu_d = beta2 * state.nu["discrete"] + (1.0 - beta2) * g * g
        discrete = state.discrete - state.lr * g / (jnp.sqrt(nu_d) + eps)
        return finish(state, L, central, discrete, stable, at, {"central": nu_c, "discrete": nu_d, "stable": nu_s})

    def finish(state, L, central, discrete, stable, at, nu):
        """The step's bookkeeping: a run whose new point is not finite stops, flagged."""
        running = ~state.diverged & (state.step < steps)
        bad = ~(jnp.isfinite(L(central)) & jnp.isfinite(L(discrete)) & jnp.isfinite(L(stable))
                & jnp.all(jnp.isfinite(central)))
        if nu is not None:
            bad = bad | ~jnp.all(jnp.isfinite(jnp.stack(list(nu.values()))))
        move = running & ~bad
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(move, a, b), new, old)
        diverging = running & bad
        return state._replace(central=keep(central, state.central), discrete=keep(discrete, state.discrete),
                              stable=keep(stable, state.stable), at=keep(at, state.at),
                              nu=state.nu if nu is None else keep(nu, state.nu),
                              step=jnp.minimum(state.step + 1, steps), diverged=state.diverged | diverging,
                              diverged_step=jnp.where(diverging, state.step, state.diverged_step))

    def start(key, hparams, data):
        dtype = jnp.result_type(float)
        hp = {**{name: jnp.asarray(v, dtype) for name, v in defaults.items()}, **hparams}
        k_init, k_run = jax.random.split(key)
        w0 = ravel_pytree(init.sample(k_init, hp))[0]
        n = w0.shape[0]
        kU, kv = jax.random.split(jax.random.fold_in(k_run, 1))
        U0 = jax.random.normal(kU, (k, n), w0.dtype) / jnp.sqrt(n)  # Lanczos orthonormalizes it
        v0 = jax.random.normal(kv, (1, n), w0.dtype) / jnp.sqrt(n)
        lr = jnp.asarray(hp["lr"], w0.dtype)
        nu = hyper = None
        if rms:
            hyper = {name: jnp.asarray(hp[name], w0.dtype) for name in ("beta2", "eps")}
            nu_start = jax.grad(flat_loss(data))(w0) ** 2 if nu0 is None else jnp.full_like(w0, nu0)
            nu = {"central": nu_start, "discrete": nu_start, "stable": nu_start}

        def solve(carry, i):  # twice at theta_0: the second settles the random start's eigenvectors
            U, X = carry
            if rms:
                at = rmsprop_velocity(flat_loss(data), w0, nu["central"], lr, hyper["beta2"], hyper["eps"], U, X,
                                      jax.random.fold_in(kv, i), 1.0 / substeps, lanczos_iters, solver_iters,
                                      threshold)
            else:
                at = central_velocity(flat_loss(data), w0, lr, U, X, jax.random.fold_in(kv, i), 1.0 / substeps,
                                      lanczos_iters, solver_iters, threshold)
            return (at.vectors, at.sdcp.X), at

        _, ats = jax.lax.scan(solve, (U0, jnp.zeros((k, k), w0.dtype)), jnp.arange(2))
        at = jax.tree.map(lambda a: a[-1], ats)
        state = FlowState(w0, w0, w0, at, v0, v0, lr, None, jnp.int32(0), k_run, jnp.bool_(False), jnp.int32(-1),
                          jnp.bool_(False), jnp.int32(-1), nu, hyper)
        return measure(state, data)

    def advance(state, data, intervals: int, start=0):
        def interval(state, _):
            state = jax.lax.fori_loop(0, every, lambda _, s: step(s, data), state)
            return measure(state, data)
        return jax.lax.scan(interval, state, jnp.arange(intervals))

    probe = Probe("central_flow", None, dict(VARIABLES), coords={"eig": list(range(k))})
    config = {"model": model.name, "layer_shapes": model.layer_shapes or (), "n_params": n_params,
              "data_shape": list(data.x.shape), "loss": loss if isinstance(loss, str) else getattr(loss, "__name__",
                                                                                                  "custom"),
              "optimizer": optimizer, "init": init.name, "steps": steps, "every": every, "probes": list(VARIABLES),
              "flow": {"k": k, "substeps": substeps, "stable_substeps": stable_substeps,
                       "lanczos_iters": lanczos_iters, "solver_iters": solver_iters, "threshold": threshold,
                       **({"nu0": nu0} if rms else {})},
              "defaults": dict(defaults)}
    ranges = {**{name: FINITE for name in init.defaults}, "lr": POSITIVE,
              **({"beta2": UNIT, "eps": Range(0)} if rms else {})}
    coords = {"layer": [name for name, _ in layers(params_shape)], "eig": list(range(k))}

    def loss_at(params):
        return loss_fn(model.apply(params, data.x), data.y)

    return Simulation(start, advance, data, steps, every, record_steps, defaults, ranges, probe, coords, config,
                      None, unravel, loss_at)


__all__ = ["FlowState", "SDCPSolution", "Velocity", "central_velocity", "check_flow", "flow_simulation",
           "pair_gradients", "project_psd", "rmsprop_terms", "rmsprop_velocity", "sdcp_residual", "single_sigma2",
           "single_sigma2_rmsprop", "solve_sdcp", "third_derivative",
           "top_eigenpair"]
