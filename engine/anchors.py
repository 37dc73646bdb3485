"""Anchor-function token tasks (Zhang et al. 2024, "Anchor function: a type of
benchmark functions for studying language models"; Zhang, Lin, Wang, Zhang & Xu 2024,
"Initialization is Critical to Whether Transformers Fit Composite Functions by
Reasoning or Memorizing"), generated, never downloaded.

A sequence of `seq_len` tokens from a vocabulary of `vocab` ids: anchors are the ids
1..4, every other token (keys and filler) is drawn uniformly from [key_low, vocab).
Anchor a maps a key z to z + shift_a (mod vocab), shifts (5, 1, -2, -8) for anchors
1-4. The label is predicted from the last position (`engine.models.transformer` reads
it), one class per vocabulary id.

    composite(...)  a key followed by two anchors (a1, a2) at a random place; label
                    z + shift_a1 + shift_a2. 15 of the 16 anchor pairs train; (4, 3)
                    is held out and the pair (3, 4) is labelled z - 6 instead of its
                    composition z - 10, so that on (4, 3) a model answers
                    "inferentially" (composing the single-anchor maps: z - 10) or
                    "symmetrically" (reusing the label of (3, 4): z - 6).
    single(...)     a key followed by one anchor; label z + shift_a ("shift"), or the
                    key itself ("identity": the key's value carried to the output
                    position; our reading of the original paper's broadcast task).

Tokens are held as floats, exactly (the transformer casts). `AnchorTable` keeps
every sequence's key, anchors, position and, for the held-out pair, both answers.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine.data import Dataset, _as_dataset, one_hot
from engine.errors import require

SHIFTS = (5, 1, -2, -8)  # anchors 1, 2, 3, 4
HELD_OUT = (4, 3)
RELABELLED = {(3, 4): -6}


class AnchorTable(NamedTuple):
    """tokens [N, seq_len] int; label [N]; key [N]; anchors [N, k]; position [N] (index
    of the key); train [N] bool; inferential, symmetric [N]: the two candidate answers
    (equal to label off the held-out pair)."""
    tokens: np.ndarray
    label: np.ndarray
    key: np.ndarray
    anchors: np.ndarray
    position: np.ndarray
    train: np.ndarray
    inferential: np.ndarray
    symmetric: np.ndarray


def _check(n: int, seq_len: int, need: int, vocab: int, key_low: int, seed: int) -> None:
    require(isinstance(n, (int, np.integer)) and n >= 1, "n", f"got {n!r}", "use an integer >= 1 sequences per pair")
    require(isinstance(seq_len, (int, np.integer)) and seq_len >= need, "seq_len",
            f"got {seq_len!r}: the task needs a key and {need - 1} anchor(s)", f"use seq_len >= {need}")
    require(isinstance(vocab, (int, np.integer)) and isinstance(key_low, (int, np.integer))
            and len(SHIFTS) < key_low < vocab, "key_low", f"got key_low={key_low!r}, vocab={vocab!r}",
            f"use {len(SHIFTS) + 1} <= key_low < vocab, so keys never collide with the anchors 1..{len(SHIFTS)}")
    require(isinstance(seed, (int, np.integer)) and seed >= 0, "seed", f"got {seed!r}", "use an integer >= 0")


def _sequences(rng, pairs: np.ndarray, n: int, seq_len: int, vocab: int, key_low: int):
    """n sequences per row of `pairs` [P, k]: (tokens [P n, L], key, anchors, position)."""
    anchors = np.repeat(pairs, n, axis=0)
    m, k = anchors.shape
    tokens = rng.integers(key_low, vocab, size=(m, seq_len))
    position = rng.integers(0, seq_len - k, size=m)
    rows = np.arange(m)
    key = tokens[rows, position]
    for i in range(k):
        tokens[rows, position + 1 + i] = anchors[:, i]
    return tokens, key, anchors, position


def composite_table(n: int = 200, seq_len: int = 8, vocab: int = 100, key_low: int = 20, seed: int = 0,
                    n_test: int | None = None) -> AnchorTable:
    """`n` sequences of each of the 15 training pairs and `n_test` (default n) of the
    held-out (4, 3), drawn from `seed` (the data seed)."""
    _check(n, seq_len, 3, vocab, key_low, seed)
    n_test = n if n_test is None else n_test
    _check(n_test, seq_len, 3, vocab, key_low, seed)
    rng = np.random.default_rng(int(seed))
    pairs = np.array([(a, b) for a in range(1, 5) for b in range(1, 5) if (a, b) != HELD_OUT])
    train = _sequences(rng, pairs, n, seq_len, vocab, key_low)
    test = _sequences(rng, np.array([HELD_OUT]), n_test, seq_len, vocab, key_low)
    tokens, key, anchors, position = (np.concatenate([a, b]) for a, b in zip(train, test))
    shift = np.array((0,) + SHIFTS)
    composed = shift[anchors[:, 0]] + shift[anchors[:, 1]]
    relabel = composed.copy()
    for (a, b), s in RELABELLED.items():
        relabel[(anchors[:, 0] == a) & (anchors[:, 1] == b)] = s
    symmetric = np.where((anchors[:, 0] == HELD_OUT[0]) & (anchors[:, 1] == HELD_OUT[1]),
                         RELABELLED[HELD_OUT[::-1]], relabel)
    is_train = np.arange(len(key)) < len(train[0])
    label = np.where(is_train, relabel, composed)
    return AnchorTable(tokens, (key + label) % vocab, key, anchors, position, is_train, (key + composed) % vocab,
                       (key + symmetric) % vocab)


def composite(n: int = 200, seq_len: int = 8, vocab: int = 100, key_low: int = 20, seed: int = 0,
              n_test: int | None = None) -> Dataset:
    """The composite task as a Dataset: x [15 n, seq_len] token ids, y one-hot [., vocab];
    x_test, y_test the held-out pair (4, 3) labelled with its inferential answer
    (z - 10), so `test_accuracy` is the inferential accuracy; `composite_table` has both
    answers for the split into inferential, symmetric and other."""
    t = composite_table(n, seq_len, vocab, key_low, seed, n_test)
    y = one_hot(t.label, vocab)
    return _as_dataset(t.tokens[t.train], y[t.train], t.tokens[~t.train], y[~t.train])


def single_table(n: int = 200, seq_len: int = 8, vocab: int = 100, key_low: int = 20, seed: int = 0,
                 task: str = "shift", n_test: int | None = None) -> AnchorTable:
    """One anchor after the key: label z + shift_a ("shift") or z ("identity"); `n`
    training and `n_test` test sequences per anchor, all four anchors in both."""
    require(task in ("shift", "identity"), "task", f"unknown value {task!r}", "use shift or identity")
    _check(n, seq_len, 2, vocab, key_low, seed)
    n_test = n if n_test is None else n_test
    _check(n_test, seq_len, 2, vocab, key_low, seed)
    rng = np.random.default_rng(int(seed))
    anchors = np.arange(1, 5)[:, None]
    parts = [_sequences(rng, anchors, count, seq_len, vocab, key_low) for count in (n, n_test)]
    tokens, key, anch, position = (np.concatenate([a, b]) for a, b in zip(*parts))
    shift = np.array((0,) + SHIFTS)[anch[:, 0]] if task == "shift" else np.zeros(len(key), int)
    label = (key + shift) % vocab
    return AnchorTable(tokens, label, key, anch, position, np.arange(len(key)) < len(parts[0][0]), label, label)


def single(n: int = 200, seq_len: int = 8, vocab: int = 100, key_low: int = 20, seed: int = 0,
           task: str = "shift", n_test: int | None = None) -> Dataset:
    """The single-anchor task as a Dataset (train and test drawn apart, same anchors)."""
    t = single_table(n, seq_len, vocab, key_low, seed, task, n_test)
    y = one_hot(t.label, vocab)
    return _as_dataset(t.tokens[t.train], y[t.train], t.tokens[~t.train], y[~t.train])


def answer_kinds(predicted, table: AnchorTable) -> dict:
    """Of the held-out sequences (`~table.train`), the fractions answered inferentially,
    symmetrically and otherwise; `predicted` [N_test] class ids in test order."""
    predicted = np.asarray(predicted)
    inf, sym = table.inferential[~table.train], table.symmetric[~table.train]
    return {"inferential": float(np.mean(predicted == inf)), "symmetric": float(np.mean(predicted == sym)),
            "other": float(np.mean((predicted != inf) & (predicted != sym)))}
