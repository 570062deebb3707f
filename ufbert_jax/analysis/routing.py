"""Routing statistics of FFF layers: exact visit counts, path entropy, logit margins, perturbation flips.

Shape legend: T tokens, H hidden, K trees, N = 2^(D+1) - 1 nodes per tree (heap order), D depth,
L = D + 1 levels.

Per layer, over the real (unpadded) tokens, `layer_counts` returns, and `LayerCounts` accumulates:
  visits [K, N] int        tokens that visited each node: the counts of fff.paths token by token. Each
                           level's counts sum to the token count; the leaves are the last 2^D nodes.
  abs_logit [K, L] float   sum over tokens of |z|, z the logit of the node visited at each level.
  same, flipped [K, D] int the perturbation test. Every token's FFF input x is replaced by
                           x + eps * rms(x) * n, rms(x) = sqrt(mean_H x^2) of that token, n ~ N(0, I_H) drawn
                           independently per token and layer; each layer's input is perturbed on its own
                           (the clean input goes on through the model). same[l] counts the (token, tree)
                           walks that are still at the same node at level l when perturbed, flipped[l] those
                           of them that take the other child there: flipped[l] / same[l] is the flip rate of
                           the level-l decision, sum(flipped) / (K T) the fraction of walks that change.

`summary` turns the counts into the derived numbers: leaf usage histogram, never-visited leaves, path
entropy in bits (the entropy of the leaf a token reaches, at most log2(2^D) = D), mean |logit| per level,
flip rates.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ufbert_jax import fff, fff_math


def layer_counts(
    x: jax.Array, w_in: jax.Array, b_in: jax.Array, keep: jax.Array, key: jax.Array, eps: jax.Array
) -> dict[str, jax.Array]:
    """One layer's counts over a batch of tokens.

    x [T, H] the FFF input in the layer's compute dtype; w_in [K, N, H] in that dtype; b_in [K, N]; keep [T]
    bool (False for padding); key: PRNG key of the perturbation; eps [] its relative scale. Returns
    {"visits" [K, N] int32, "abs_logit" [K, L] float32, "same" [K, D] int32, "flipped" [K, D] int32}.
    """
    trees, nodes, _ = w_in.shape
    paths = fff.paths(x, w_in, b_in)  # [T, K, L]
    weight = keep.astype(jnp.int32)[:, None, None]  # [T, 1, 1]
    flat_nodes = jnp.arange(trees, dtype=jnp.int32)[None, :, None] * nodes + paths  # [T, K, L] into [K*N]
    visits = (
        jnp.zeros(trees * nodes, jnp.int32)
        .at[flat_nodes.ravel()]
        .add(jnp.broadcast_to(weight, paths.shape).ravel())
    )

    # Dense logits [T, K, N]: K*N is a few thousand for every preset, unlike gathered rows [T, K, L, H].
    logits = jnp.take_along_axis(fff_math.dense_logits(x, w_in, b_in), paths, axis=-1)  # [T, K, L]
    abs_logit = (jnp.abs(logits) * weight).sum(axis=0)  # [K, L]

    clean = x.astype(jnp.float32)
    rms = jnp.sqrt(jnp.mean(clean**2, axis=-1, keepdims=True))  # [T, 1]
    noisy = clean + eps * rms * jax.random.normal(key, clean.shape, jnp.float32)
    agree = paths == fff.paths(noisy.astype(x.dtype), w_in, b_in)  # [T, K, L]
    same = agree[..., :-1]  # [T, K, D]: at the same node at level l
    flipped = same & ~agree[..., 1:]  # ... and at another node at level l + 1
    return {
        "visits": visits.reshape(trees, nodes),
        "abs_logit": abs_logit,
        "same": (same * weight).sum(axis=0),
        "flipped": (flipped * weight).sum(axis=0),
    }


@dataclasses.dataclass
class LayerCounts:
    """One layer's counts summed over batches (int64 / float64); fields as `layer_counts` returns them."""

    visits: np.ndarray
    abs_logit: np.ndarray
    same: np.ndarray
    flipped: np.ndarray

    @classmethod
    def zeros(cls, trees: int, depth: int) -> LayerCounts:
        nodes = 2 ** (depth + 1) - 1
        ints = lambda *shape: np.zeros(shape, np.int64)  # noqa: E731
        return cls(ints(trees, nodes), np.zeros((trees, depth + 1)), ints(trees, depth), ints(trees, depth))

    def add(self, counts: dict[str, np.ndarray]) -> None:
        for name, value in counts.items():
            total = getattr(self, name)
            total += np.asarray(value, total.dtype)

    @property
    def depth(self) -> int:
        return self.abs_logit.shape[1] - 1

    @property
    def tokens(self) -> int:
        return int(self.visits[0, 0])  # every token visits the root of every tree


def path_entropy_bits(leaf_visits: np.ndarray) -> np.ndarray:
    """Entropy (bits) of the leaf a token reaches, per tree: leaf_visits [K, 2^D] -> [K]."""
    p = leaf_visits / np.maximum(leaf_visits.sum(axis=-1, keepdims=True), 1)
    return -(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)).sum(axis=-1)


def leaf_histogram(leaf_visits: np.ndarray) -> dict[str, list[int]]:
    """How many leaves (all trees) were visited 0 times, once, 2-3, 4-7, ... times (power-of-two bins).

    Returns {"lower": [0, 1, 2, 4, ...], "leaves": [count per bin]}: bin i holds visit counts in
    [lower[i], lower[i+1]).
    """
    counts = leaf_visits.ravel()
    top = max(int(counts.max()), 1).bit_length()
    lower = [0] + [2**i for i in range(top)]
    edges = [*lower, 2**top]
    return {"lower": lower, "leaves": np.histogram(counts, bins=edges)[0].astype(int).tolist()}


def summary(counts: LayerCounts) -> dict:
    """The derived numbers of one layer (see the module docstring)."""
    depth, tokens = counts.depth, counts.tokens
    trees = counts.visits.shape[0]
    leaves = counts.visits[:, 2**depth - 1 :]  # [K, 2^D]
    entropy = path_entropy_bits(leaves)
    same, flipped = counts.same.sum(axis=0), counts.flipped.sum(axis=0)  # [D]
    return {
        "tokens": tokens,
        "path_entropy_bits": float(entropy.mean()),
        "path_entropy_bits_per_tree": entropy.tolist(),
        "max_path_entropy_bits": float(depth),
        "leaves_never_visited_fraction": float((leaves == 0).mean()),
        "leaf_histogram": leaf_histogram(leaves),
        "mean_abs_logit_per_level": (counts.abs_logit.sum(axis=0) / max(trees * tokens, 1)).tolist(),
        "flip_rate_per_level": (flipped / np.maximum(same, 1)).tolist(),
        "changed_walks_fraction": float(flipped.sum() / max(trees * tokens, 1)),
    }
