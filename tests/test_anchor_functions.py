"""Anchor functions (Zhang et al. 2024) in a small version: a depth-2 transformer drawn
at a small initialization (gamma = 1) learns the 15 trained anchor pairs as a rule (fresh
sequences of them are answered right) and answers the held-out pair (4, 3)
symmetrically, with the label of (3, 4): at CPU scale the opposite of the paper's
inferential answer for small initializations (the summary's claim (a) fails there too)."""
import json

from engine import experiment, sweep
from experiments import anchor_functions


def test_small_init_learns_the_pairs_and_answers_the_held_out_pair_symmetrically(tmp_path):
    """gamma 1, d_model 32, 1000 sequences per pair, 1500 AdamW steps of 200 (measured:
    see the assertions' messages). The attention of the trained model is far from
    uniform: its best head's shift and broadcast are above 1.5x their uniform values."""
    config = {**anchor_functions.PRESETS["quick"], "gammas": [1.0], "steps": 1500, "every": 500, "probe_count": 8}
    experiment.run(anchor_functions, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    run = s["per_run"]["depth=2,gamma=1"]
    assert run["fresh_accuracy"][0] >= 0.9, run
    assert run["symmetric"][0] >= 0.5 and run["symmetric"][0] > run["inferential"][0], run
    base = s["uniform_attention"]
    assert run["shift"][0] >= 1.5 * base["shift"] and run["broadcast"][0] >= 1.5 * base["broadcast"], (run, base)
    ds = sweep.load(tmp_path / "results.nc")
    assert ds.attention.dims[-5:] == ("probe", "layer", "head", "query", "key")
    assert (tmp_path / "anchor_attention.png").exists() and (tmp_path / "anchor_answers_vs_gamma.png").exists()
