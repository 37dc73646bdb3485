import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.monitoring
import numpy as np
import xarray as xr

from engine import sweep


def assert_bitwise(a: xr.Dataset, b: xr.Dataset):
    """Every variable of `a` equals `b`'s bit for bit (NaN where NaN)."""
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)

LRS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_a_run_in_a_batch_of_64_equals_the_run_alone(tiny_sim):
    sim = tiny_sim(steps=100, every=20)
    ds = sweep.sweep(sim, grid={"lr": LRS}, seeds=8, strategy="vmap")
    assert ds.loss.sizes == {"seed": 8, "lr": 8, "step": 6}
    run = jax.jit(sim.run)
    for seed, lr in [(0, 0.02), (3, 0.3), (7, 0.6)]:
        alone = run(jax.random.fold_in(jax.random.key(0), seed), {"lr": lr})
        np.testing.assert_array_equal(ds.loss.sel(seed=seed, lr=lr), alone["loss"])
        # the trajectory is bit-identical; a norm ratio measured from it is compiled into
        # a different program (batched vs not) and may round differently by ~1 ulp
        np.testing.assert_allclose(ds.relative_change_layer.sel(seed=seed, lr=lr),
                                   alone["relative_change_layer"], rtol=1e-6, atol=1e-12)


def test_seed_is_the_same_run_whatever_else_is_in_the_sweep(tiny_sim):
    sim = tiny_sim()
    a = sweep.sweep(sim, grid={"lr": [0.1, 0.2]}, seeds=[0, 5])
    b = sweep.sweep(sim, grid={"lr": [0.2]}, seeds=[5, 9])
    np.testing.assert_array_equal(a.loss.sel(seed=5, lr=0.2), b.loss.sel(seed=5, lr=0.2))


def test_chunk_size_7_equals_one_chunk_and_map_equals_vmap(tiny_sim):
    sim = tiny_sim()
    one = sweep.sweep(sim, grid={"lr": LRS[:5]}, seeds=4)
    chunked = sweep.sweep(sim, grid={"lr": LRS[:5]}, seeds=4, chunk=7)
    mapped = sweep.sweep(sim, grid={"lr": LRS[:5]}, seeds=4, strategy="map", map_batch=3)
    assert json.loads(chunked.attrs["config"])["plans"][0]["n_chunks"] == 3
    for other in (chunked, mapped):
        assert_bitwise(one, other)


def test_a_memory_budget_too_small_for_all_runs_splits_them_into_chunks(tiny_sim):
    """The chunk size is chosen from the per-run estimate before compiling; a budget
    for ~5 runs turns 20 runs into several chunks with the same results."""
    sim = tiny_sim()
    per_run_mb = sweep.footprint(sim).run / 2**20
    one = sweep.sweep(sim, grid={"lr": LRS[:5]}, seeds=4)
    budgeted = sweep.sweep(sim, grid={"lr": LRS[:5]}, seeds=4, memory_budget_mb=5.5 * per_run_mb)
    plan = json.loads(budgeted.attrs["config"])["plans"][0]
    assert plan["chunk"] <= 6 and plan["n_chunks"] >= 4
    assert_bitwise(one, budgeted)


def test_diverging_runs_are_flagged_and_do_not_touch_their_neighbours(tiny_sim):
    sim = tiny_sim(steps=200, every=20)
    stable = sweep.sweep(sim, grid={"lr": [0.05, 0.2]}, seeds=3)
    mixed = sweep.sweep(sim, grid={"lr": [0.05, 0.2, 20.0, 200.0]}, seeds=3)
    np.testing.assert_array_equal(mixed.diverged.values, np.isin(mixed.lr, [20.0, 200.0])[None].repeat(3, 0))
    assert (mixed.diverged_step.sel(lr=[20.0, 200.0]) > 0).all()
    assert (mixed.diverged_step.sel(lr=[0.05, 0.2]) == -1).all()
    assert_bitwise(mixed.sel(lr=[0.05, 0.2]), stable)
    assert np.isfinite(mixed.loss.sel(lr=[0.05, 0.2])).all()


def test_static_axes_join_on_a_coordinate_and_results_roundtrip(tmp_path):
    from engine import data, init, models, optim, simulate

    def build(width, activation):
        model = models.mlp((1, width, 1), activation)
        return simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(), init.width_power(model),
                                   steps=20, every=10, probes=("loss", "relative_change_layer"))

    ds = sweep.sweep(build, grid={"lr": [0.01, 0.02], "gamma": [0.5, 1.0]},
                     static={"width": [8, 16], "activation": ["tanh", "relu"]}, seeds=2)
    assert ds.loss.dims == ("seed", "width", "activation", "lr", "gamma", "step")
    assert ds.diverged.dims == ("seed", "width", "activation", "lr", "gamma")
    assert np.isfinite(ds.loss).all()
    sweep.save(ds, tmp_path / "r.nc")
    back = sweep.load(tmp_path / "r.nc")
    xr.testing.assert_identical(ds, back)
    assert sweep.config_of(back)["grid"] == {"lr": [0.01, 0.02], "gamma": [0.5, 1.0]}
    assert not any(p.name.endswith(".tmp") or ".tmp-" in p.name for p in tmp_path.iterdir())


EIGHT_DEVICES = textwrap.dedent("""
    import jax, numpy as np, xarray as xr
    assert jax.device_count() == 8, jax.devices()
    from engine import data, init, models, optim, probes, simulate, sweep
    model = models.mlp((1, 32, 1), "relu")
    sim = simulate.simulation(model, data.luo_points(), "mse", optim.gd(), init.luo(model),
                              steps=60, every=20, probes=("loss", "relative_change_layer"))
    grid = {"lr": [0.05, 0.1, 0.2, 40.0, 0.3]}
    eight = sweep.sweep(sim, grid=grid, seeds=4, chunk=8)   # 20 runs: 3 chunks of 8, padded
    one = sweep.sweep(sim, grid=grid, seeds=4, devices=jax.devices()[:1])
    assert "x8" in eight.attrs["device"] and "x1" in one.attrs["device"]
    # the trajectory is the same bit for bit; a measurement computed from it (a norm
    # ratio) may round differently in the partitioned program, by ~1 float32 ulp
    for name in ("loss", "diverged", "diverged_step", "converged", "converged_step"):
        np.testing.assert_array_equal(eight[name].values, one[name].values, err_msg=name)
    xr.testing.assert_allclose(eight.drop_attrs(), one.drop_attrs(), rtol=1e-6)
    assert bool(eight.diverged.sel(lr=40.0).all()) and not bool(eight.diverged.sel(lr=0.1).any())
    # interrupted after its 2nd checkpoint on 8 devices, resumed: bit-identical
    import tempfile
    from engine import checkpoint
    folder, calls, save_state = tempfile.mkdtemp(), [], checkpoint.save_state
    def crash_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        save_state(*a, **k)
    checkpoint.save_state = crash_on_the_second
    try:
        sweep.sweep(sim, grid=grid, seeds=4, chunk=8, segment=1, checkpoint=folder)
        raise AssertionError("the sweep was not interrupted")
    except KeyboardInterrupt:
        pass
    checkpoint.save_state = save_state
    resumed = sweep.sweep(sim, grid=grid, seeds=4, chunk=8, segment=1, checkpoint=folder)
    whole = sweep.sweep(sim, grid=grid, seeds=4, chunk=8, segment=1)
    for name in whole.data_vars:
        np.testing.assert_array_equal(resumed[name].values, whole[name].values, err_msg=name)
    # curvature probes (Lanczos loops inside the scan) shard the same way
    model = models.mlp((1, 16, 1), "tanh")
    sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(), init.scaled(model),
                              steps=40, every=10, probes=("loss", probes.every(20, "sharpness"), "directional_curvature"))
    for strategy in ("vmap", "map"):
        eight = sweep.sweep(sim, grid={"lr": [0.05, 0.1, 0.2]}, seeds=3, strategy=strategy)
        one = sweep.sweep(sim, grid={"lr": [0.05, 0.1, 0.2]}, seeds=3, strategy=strategy,
                          devices=jax.devices()[:1])
        np.testing.assert_array_equal(eight.loss.values, one.loss.values)
        # a converged residual is rounding noise (~1e-7): compare it absolutely
        xr.testing.assert_allclose(eight.drop_attrs().drop_vars("eigen_residual"),
                                   one.drop_attrs().drop_vars("eigen_residual"), rtol=1e-5)
        np.testing.assert_allclose(eight.eigen_residual, one.eigen_residual, atol=1e-5)
    print("OK")
""")


def test_eight_simulated_devices_give_the_same_results_as_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_importing_engine_first_gives_one_host_device_per_requested_core():
    code = "import engine, jax; print(jax.device_count())"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for wanted, expected in (("3", "3"), ("0", "1")):
        out = subprocess.run([sys.executable, "-c", code], env={**env, "ENGINE_CPU_DEVICES": wanted,
                                                                "JAX_PLATFORMS": "cpu"},
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == expected, out.stderr[-2000:]


TWO_DEVICES_EIGH = textwrap.dedent("""
    import engine, jax
    assert jax.device_count() == 2, jax.devices()
    from engine import data, init, models, optim, probes, simulate, sweep
    model = models.mlp((1, 100, 1), "tanh")
    sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(), init.scaled(model),
                              steps=20, every=10, probes=("loss", probes.sharpness(iters=40, warm_iters=40)))
    ds = sweep.sweep(sim, grid={"lr": [0.1, 0.2, 0.3, 0.4]}, seeds=2, progress=False)
    assert sweep.config_of(ds)["plans"][0]["map_batch"] > 1   # eigh is vmapped over runs
    print("OK")
""")


def test_vmapped_eigen_solves_on_every_core_do_not_deadlock():
    """jaxlib's CPU eigh splits a batch over XLA's intra-op pool and waits; with one
    device per pool thread all of them waited on each other (this sweep hung forever
    before eigh was looped over runs on CPU)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", TWO_DEVICES_EIGH], capture_output=True, text=True,
                         env={**env, "ENGINE_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_a_second_identical_sweep_compiles_nothing(tiny_sim):
    """The compiled segment is kept per simulation and shapes: a notebook that reruns a
    sweep, or an experiment that runs several, pays XLA's backend compile once."""
    sim = tiny_sim(steps=40, every=20, probes=("loss", "sharpness"))
    first = sweep.sweep(sim, grid={"gamma": [0.5, 1.0]}, seeds=2, progress=False)
    events = []
    listener = lambda name, *a, **k: events.append(name) if "backend_compile" in name else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        second = sweep.sweep(sim, grid={"gamma": [0.5, 1.0]}, seeds=2, progress=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not events, events
    assert_bitwise(first, second)
    # what produced the numbers is recorded: the device kind and the matmul precision
    assert first.attrs["device_kind"] and first.attrs["matmul_precision"] == "default"


def test_a_static_axis_that_changes_a_probe_dimension_joins_outer():
    """Attention maps have one `block` per layer, so depth (static) changes their size:
    the shallower network's maps are NaN past its depth, the deeper one's are all there,
    and variables without `block` do not gain it (before, the parts were mixed)."""
    from engine import anchors, init, models, optim, probes, simulate
    task = anchors.composite(n=2, seed=0)

    def build(depth):
        m = models.transformer(vocab=100, seq_len=8, d_model=8, heads=2, depth=depth)
        return simulate.simulation(m, task, "cross_entropy", optim.adamw(lr=1e-3), init.scaled(m), steps=4,
                                   every=2, probes=("loss", probes.attention_maps(m, task.x[:3])))
    ds = sweep.sweep(build, static={"depth": [1, 2]}, grid={"init_scale": [1.0, 2.0]}, seeds=1, progress=False)
    assert ds.loss.dims == ("seed", "depth", "init_scale", "step")
    assert ds.attention.sizes["block"] == 2
    assert np.isnan(ds.attention.sel(depth=1).isel(block=1)).all()
    assert np.isfinite(ds.attention.sel(depth=1).isel(block=0)).all()
    assert np.isfinite(ds.attention.sel(depth=2)).all()
