"""Transformer probes: attention maps on a probe batch, the held-out pair's answers split
into inferential / symmetric / other, and the neurons of attention projections for the
condensation analysis."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import analysis, anchors, init, models, optim, probes, simulate, sweep
from engine.errors import ConfigError


def _snapshot(model, params):
    return probes.Snapshot(params, None, None, model.apply, None, None, None, None, jax.random.key(0), True)


def test_attention_maps_are_causal_rows_of_a_softmax_and_match_a_hand_computation():
    """One block without LayerNorm, one head: A = softmax(q k^T / sqrt(d)) under the causal
    mask, q = h W_q + b_q, k = h W_k + b_k, h the token plus position embeddings."""
    model = models.transformer(vocab=12, seq_len=5, d_model=8, heads=1, layer_norm=False)
    params = model.init(jax.random.key(4))
    x = jnp.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3], [5, 8, 9, 7, 9]], jnp.float32)
    values, _ = probes.attention_maps(model, x).measure(_snapshot(model, params), None)
    A = values["attention"]
    assert A.shape == (3, 1, 1, 5, 5)
    np.testing.assert_allclose(A.sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(jnp.triu(A, k=1)).max()) == 0.0
    att = params["MultiHeadDotProductAttention_0"]
    h = params["Embed_0"]["embedding"][x.astype(int)] + params["position"]
    q = h @ att["query"]["kernel"][:, 0] + att["query"]["bias"][0]
    k = h @ att["key"]["kernel"][:, 0] + att["key"]["bias"][0]
    logits = jnp.where(jnp.tril(jnp.ones((5, 5), bool)), q @ jnp.swapaxes(k, 1, 2) / np.sqrt(8), -jnp.inf)
    np.testing.assert_allclose(A[:, 0, 0], jax.nn.softmax(logits, -1), rtol=1e-5, atol=1e-6)
    mean, _ = probes.attention_maps(model, x, average=True).measure(_snapshot(model, params), None)
    np.testing.assert_allclose(mean["attention"], A.mean(0), rtol=1e-6)
    with pytest.raises(ConfigError, match="attention"):
        probes.attention_maps(models.mlp((5, 3, 2)), x)


def test_held_out_answers_inside_a_sweep_equal_anchors_answer_kinds_of_the_predictions():
    """A 2-block transformer trained 30 AdamW steps on the composite anchor task: at every
    record the probe's fractions equal `anchors.answer_kinds` of the argmax predictions of
    the same parameters (kept as snapshots), and sum to 1; the attention maps have dims
    (probe, layer, head, query, key)."""
    table = anchors.composite_table(n=8, seq_len=6, vocab=30, key_low=8, seed=0, n_test=24)
    d = anchors.composite(n=8, seq_len=6, vocab=30, key_low=8, seed=0, n_test=24)
    model = models.transformer(vocab=30, seq_len=6, d_model=16, heads=2, depth=2)
    x_probe = table.tokens[~table.train][:4].astype(np.float32)
    sim = simulate.simulation(model, d, "cross_entropy", optim.adamw(lr=1e-2, weight_decay=0.01, clip_norm=1.0),
                              init.fan_in_power(model, 0.5), steps=30, every=15,
                              probes=("loss", probes.held_out_answers(table), probes.attention_maps(model, x_probe)),
                              snapshots=[0, 15, 30])
    ds = sweep.sweep(sim, grid={"gamma": [0.4, 0.8]}, seeds=1, progress=False)
    assert ds.held_out_answers.dims[-1] == "held_out_answers_kind"
    assert list(ds.held_out_answers_kind.values) == ["inferential", "symmetric", "other"]
    assert ds.attention.dims[-5:] == ("probe", "block", "head", "query", "key")
    np.testing.assert_allclose(ds.held_out_answers.sum("held_out_answers_kind"), 1.0, rtol=1e-6)
    snaps = ds.params_snapshot
    for g in (0.4, 0.8):
        for i, step in enumerate([0, 15, 30]):
            params = sim.unravel(snaps.sel(gamma=g, seed=0).values[i])
            predicted = np.argmax(np.asarray(model.apply(params, jnp.asarray(table.tokens[~table.train], jnp.float32))), -1)
            kinds = anchors.answer_kinds(predicted, table)
            got = ds.held_out_answers.sel(gamma=g, seed=0, step=step).values
            np.testing.assert_allclose(got, [kinds["inferential"], kinds["symmetric"], kinds["other"]], atol=1e-6)


def test_query_and_mlp_neurons_for_the_condensation_analysis():
    """neuron_weights of "MultiHeadDotProductAttention_0/query": heads x head_dim units,
    each its d_model input weights and bias; of "Dense_0" (the MLP's input layer): 4
    d_model units. A query projection whose units all share one direction is one cluster."""
    model = models.transformer(vocab=10, seq_len=4, d_model=8, heads=2)
    params = model.init(jax.random.key(0))
    snap = _snapshot(model, params)
    q, _ = probes.neuron_weights("MultiHeadDotProductAttention_0/query", "w_query").measure(snap, None)
    mlp, _ = probes.neuron_weights("Dense_0", "w_mlp").measure(snap, None)
    kernel = params["MultiHeadDotProductAttention_0"]["query"]["kernel"]
    assert q["w_query"].shape == (8, 9) and mlp["w_mlp"].shape == (32, 9)
    np.testing.assert_array_equal(q["w_query"][:, :8], kernel.reshape(8, 8).T)
    condensed = dict(params)
    att = dict(params["MultiHeadDotProductAttention_0"])
    direction = jax.random.normal(jax.random.key(1), (8, 1, 1))
    att["query"] = {"kernel": direction * jnp.linspace(1, 2, 8).reshape(1, 2, 4), "bias": jnp.zeros((2, 4))}
    condensed["MultiHeadDotProductAttention_0"] = att
    w, _ = probes.neuron_weights("MultiHeadDotProductAttention_0/query").measure(_snapshot(model, condensed), None)
    assert list(analysis.orientation_clusters(np.asarray(w["neuron_weights"]))) == [8]
    assert len(analysis.orientation_clusters(np.asarray(q["w_query"]))) > 4  # a random draw: spread out
    with pytest.raises(ConfigError, match="query"):
        probes.neuron_weights("MultiHeadDotProductAttention_0/queries").measure(snap, None)
