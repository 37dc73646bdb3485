import jax
import pytest

from engine import data, init, models, optim, simulate


@pytest.fixture
def tiny_sim():
    """A two-layer ReLU network on Luo's three points, GD, 60 steps recorded every 20."""
    def make(steps=60, every=20, probes=("loss", "relative_change_layer"), **kw):
        model = models.mlp((1, 32, 1), "relu")
        return simulate.simulation(model, data.luo_points(), "mse", optim.gd(lr=0.1),
                                   init.luo(model), steps=steps, every=every, probes=probes, **kw)
    return make


def key(i=0):
    return jax.random.key(i)
