"""A transformer run is the same run whatever it is batched with: on the composite
anchor task (`engine.anchors`), a small pre-LayerNorm transformer (2 layers, d_model
16, 2 heads) under minibatch AdamW with dropout, 16 runs (2 seeds x 4 init scales x 2
dropout rates).

- With the sweep's own strategy (on CPU "auto" runs them one after another), every
  record of a run alone equals the same run among 16 and in chunks, bit for bit, as
  the MLP runs do (tests/test_sweep.py).
- Forced to one vmapped program (`strategy="vmap"`, not run here, to keep CI short), the
  batched contractions round differently with the batch's size: a record differed from
  the run alone by at most 1 float32 ulp (8e-8 relative) over 12 steps.
- On 8 simulated devices against one: bit for bit as well. Until the attention's
  softmax was differentiated by its closed form (`models.softmax`), it was not: the
  derivative through y = e / sum e kept a division by a broadcast sum, which XLA
  rewrote as a product with the reciprocal in the one-device program but not in the
  sharded one, an ulp that AdamW amplified to 1.5e-6 relative in 12 steps (GD at lr
  0.1, init scale 2: 9.5%). A quantity measured by Lanczos (the sharpness) may still
  round differently, as for the MLP runs: rel 4.2e-7 over 40 AdamW steps with dropout
  and clipping (measured, not tested here, to keep CI short).
"""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from engine import sweep

SETUP = """
from engine import anchors, init, models, optim, simulate
model = models.transformer(vocab=100, seq_len=8, d_model=16, heads=2, depth=2)
task = anchors.composite(n=4, seed=0)
sim = simulate.simulation(model, task, "cross_entropy", optim.adamw(lr=1e-3, weight_decay=0.01),
                          init.scaled(model), steps=12, every=4, probes=("loss", "accuracy", "test_accuracy"),
                          batch_size=20, dropout=0.0)
grid = {"init_scale": [0.5, 1.0, 1.5, 2.0], "dropout": [0.0, 0.1]}
NAMES = ("loss", "accuracy", "test_accuracy")
"""
namespace = {}
exec(SETUP, namespace)
sim, grid, NAMES = namespace["sim"], namespace["grid"], namespace["NAMES"]


def test_a_transformer_run_among_16_equals_the_run_alone():
    run = jax.jit(sim.run)
    ds = sweep.sweep(sim, grid=grid, seeds=2, progress=False)
    assert ds.sizes["seed"] * ds.sizes["init_scale"] * ds.sizes["dropout"] == 16
    for seed, scale, rate in [(0, 0.5, 0.0), (1, 1.5, 0.1), (1, 2.0, 0.0)]:
        alone = run(jax.random.fold_in(jax.random.key(0), seed), {"init_scale": scale, "dropout": rate})
        for name in NAMES:
            np.testing.assert_array_equal(ds[name].sel(seed=seed, init_scale=scale, dropout=rate).values,
                                          alone[name], err_msg=name)
    chunked = sweep.sweep(sim, grid=grid, seeds=2, chunk=5, progress=False)
    np.testing.assert_array_equal(chunked.loss.values, ds.loss.values)


EIGHT_DEVICES = textwrap.dedent(SETUP + """
import jax, numpy as np
from engine import sweep
assert jax.device_count() == 8, jax.devices()
eight = sweep.sweep(sim, grid=grid, seeds=2, progress=False)
one = sweep.sweep(sim, grid=grid, seeds=2, progress=False, devices=jax.devices()[:1])
for name in NAMES:
    np.testing.assert_array_equal(eight[name].values, one[name].values, err_msg=name)
assert len(set(one.loss.isel(step=-1).values.ravel().tolist())) == 16  # every run differs
print("OK")
""")


def test_transformer_runs_on_eight_simulated_devices_equal_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
