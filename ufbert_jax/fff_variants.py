"""FFF variants for experiments: soft routing, the hardening loss and randomized child transpositions.

Shape legend: T tokens, H hidden, K trees, N = 2^(D+1) - 1 nodes per tree (heap order), D depth,
L = D + 1 levels.

Each variant is chosen by a ModelConfig field. The default of every field is the original UltraFastBERT
(ufbert_jax.fff_math: hard routing, no extra loss), which model.FastFeedForward runs through fff.apply
without this module; a layer holds a `Variant` only when its config asks for one (`wanted`). The variants
build on fff_math's pieces (dense logits, the path walk, the weighted output product).

Every node n of a tree is a neuron with logit z_n (float32, as in ufbert_jax.fff) and contribution
GELU(z_n) w_out[n]. Write s_n for the weight of the right child 2n+2 and 1 - s_n for the left child 2n+1,
and r_n for the reach weight of node n: r_0 = 1, r_{2n+1} = r_n (1 - s_n), r_{2n+2} = r_n s_n. The layer is
y = sum over trees and nodes of r_n GELU(z_n) w_out[n]; equivalently F_n = GELU(z_n) w_out[n] +
(1 - s_n) F_{2n+1} + s_n F_{2n+2} with y = sum over trees of F_0.

  * fff_routing="hard": s_n = 1[z_n > 0], so r is the 0/1 map of the L visited nodes (ufbert_jax.fff_math).
  * fff_routing="soft": s_n = sigmoid(z_n), the training-time mixture of Belcak & Wattenhofer, "Fast
    Feedforward Networks" (arXiv 2308.14711), for the UltraFastBERT tree where every node is a neuron:
    every node contributes, weighted by the probability that a token taking each decision at random
    (right with probability sigmoid(z_n)) reaches it, so y is the expectation of the hard layer's output
    over those random walks and routing gets a gradient. Dense: cost of a K*N-wide feedforward.
    As in the FFF paper, soft routing is for training; evaluate the hardened model by loading it with
    fff_routing="hard" (a config override; the parameters are the same).
  * fff_hardening=h > 0: the FFF paper's hardening loss. Each layer computes the mean, over tokens, trees
    and the 2^D - 1 internal nodes, of the entropy (nats) of the node decision Bernoulli(sigmoid(z_n));
    `encode` returns h times the mean of that over the layers, which mlm_loss adds to the MLM loss.
    Works with either routing (under hard routing it rewards decisive logits).
  * fff_transpose=p > 0: randomized child transpositions, the FFF paper's remedy for overfragmentation:
    every (token, tree, node) decision is swapped with probability p, drawn afresh on every call from the
    module's "dropout" RNG stream (hard: the token goes to the other child; soft: s_n becomes 1 - s_n).
    Like dropout it is a training-time device; pretraining runs in eval mode, so it is switched by the
    config, not by train()/eval(): evaluate with fff_transpose=0.

The hard and soft forms follow ufbert_jax.fff_math's numerics: float32 logits, the weighted activation rounded
to the weights' dtype before the output product, which accumulates in float32; the result has x's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ufbert_jax import fff, fff_math
from ufbert_jax.config import ModelConfig

HARDENING = "fff_hardening"  # the name Variant sows its per-layer hardening term under


def wanted(cfg: ModelConfig) -> bool:
    """Whether `cfg` asks for any variant (else the layer is the original, run by fff.apply alone)."""
    return cfg.fff_routing != "hard" or cfg.fff_transpose > 0 or cfg.fff_hardening > 0


def reach_weights(right: jax.Array) -> jax.Array:
    """Reach weight of every node from the right-child weights s: [T, K, N] -> [T, K, N].

    r_0 = 1, r_{2n+1} = r_n (1 - s_n), r_{2n+2} = r_n s_n. With s in {0, 1} this is fff_math.path_map.
    """
    depth = fff_math.depth_from_nodes(right.shape[-1])
    levels = [jnp.ones((*right.shape[:-1], 1), right.dtype)]  # level 0: the root, [T, K, 1]
    for level in range(depth):
        reach, s = levels[-1], right[..., 2**level - 1 : 2 ** (level + 1) - 1]  # [T, K, 2^l] each
        children = jnp.stack([reach * (1 - s), reach * s], axis=-1)  # [T, K, 2^l, 2]: left, right
        levels.append(children.reshape(*reach.shape[:-1], 2 * reach.shape[-1]))  # heap order, [T, K, 2^(l+1)]
    return jnp.concatenate(levels, axis=-1)  # [T, K, N]


def hard(x: jax.Array, w_in: jax.Array, b_in: jax.Array, w_out: jax.Array, flip: jax.Array) -> jax.Array:
    """Hard routing with the decisions where `flip` is True swapped: fff_math.masked with other decisions.

    x [T, H]; w_in, w_out [K, N, H]; b_in [K, N]; flip [T, K, N] bool -> [T, H]. Routing gets no gradient.
    """
    logits = fff_math.dense_logits(x, w_in, b_in)  # [T, K, N]
    return fff_math.weighted_output(logits, fff_math.path_map((logits > 0) != flip), w_out, x.dtype)


def soft(x: jax.Array, w_in: jax.Array, b_in: jax.Array, w_out: jax.Array, flip: jax.Array | None = None):
    """Soft routing: the FFF paper's mixture, s_n = sigmoid(z_n) (1 - sigmoid(z_n) where `flip`).

    x [T, H]; w_in, w_out [K, N, H]; b_in [K, N]; flip [T, K, N] bool or None -> [T, H].
    """
    logits = fff_math.dense_logits(x, w_in, b_in)  # [T, K, N]
    right = jax.nn.sigmoid(logits)
    if flip is not None:
        right = jnp.where(flip, 1 - right, right)
    return fff_math.weighted_output(logits, reach_weights(right), w_out, x.dtype)


def decision_entropy(x: jax.Array, w_in: jax.Array, b_in: jax.Array) -> jax.Array:
    """The hardening term of one layer: mean entropy (nats) of the internal nodes' decisions.

    x [T, H]; w_in [K, N, H]; b_in [K, N] -> [] float32: the mean over tokens, trees and the 2^D - 1 internal
    nodes of H(sigmoid(z)) = s softplus(-z) + (1 - s) softplus(z), s = sigmoid(z) (exact, no clipping); 0 for
    D = 0. In [0, ln 2].
    """
    internal = 2 ** fff_math.depth_from_nodes(w_in.shape[1]) - 1
    if internal == 0:
        return jnp.zeros((), jnp.float32)
    logits = fff_math.dense_logits(x, w_in[:, :internal], b_in[:, :internal])  # [T, K, 2^D - 1]
    s = jax.nn.sigmoid(logits)
    entropy = s * jax.nn.softplus(-logits) + (1 - s) * jax.nn.softplus(logits)
    return entropy.mean()


class Variant(nnx.Module):
    """The variants of one FFF layer (no parameters), as ModelConfig selects them; only where `wanted`.

    model.FastFeedForward calls it in place of fff.apply. Soft routing and transpositions run the dense forms
    above (the FFF implementation switch does not apply to them); hard routing without transpositions (the
    hardening loss alone) runs fff.apply. It draws transpositions from its own fork of the "dropout" RNG
    stream (only when fff_transpose > 0) and sows the layer's hardening term (only when fff_hardening > 0,
    and only inside nnx.capture: see `encode`).
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.soft = cfg.fff_routing == "soft"  # the config checked the name (fff_names.ROUTINGS)
        self.transpose = cfg.fff_transpose
        self.hardening = cfg.fff_hardening > 0
        self.rngs = rngs["dropout"].fork() if self.transpose > 0 else None

    def __call__(
        self, x: jax.Array, w_in: jax.Array, b_in: jax.Array, w_out: jax.Array, impl: str
    ) -> jax.Array:
        """x [..., H]; w_in, w_out [K, N, H]; b_in [K, N] -> [..., H]."""
        fff_math.check_shapes(x, w_in, b_in, w_out)
        flat = x.reshape(-1, x.shape[-1])  # [..., H] -> [T, H]
        flip = None
        if self.transpose > 0:
            flip = jax.random.bernoulli(
                self.rngs(), self.transpose, (flat.shape[0], *b_in.shape)
            )  # [T, K, N]
        if self.soft:
            y = soft(flat, w_in, b_in, w_out, flip)
        elif flip is not None:
            y = hard(flat, w_in, b_in, w_out, flip)
        else:
            y = fff.apply(flat, w_in, b_in, w_out, impl=impl)
        if self.hardening:
            self.sow(nnx.Intermediate, HARDENING, decision_entropy(flat, w_in, b_in), capture_noop=True)
        return y.reshape(x.shape)


def encode(model: nnx.Module, token_ids: jax.Array) -> tuple[jax.Array, jax.Array | float]:
    """model.encoder(token_ids) and the hardening loss: (hidden [B, S, H], h * mean term over layers).

    `model` has `cfg` and `encoder` (MaskedLM, SequenceClassifier). With fff_hardening = 0 (the default) this
    is exactly model.encoder(token_ids) and 0.0.
    """
    weight = model.cfg.fff_hardening
    if weight == 0:
        return model.encoder(token_ids), 0.0
    hidden, sowed = nnx.capture(lambda encoder, ids: encoder(ids), nnx.Intermediate)(model.encoder, token_ids)
    sown = [var.get_value() for path, var in nnx.to_flat_state(sowed) if path[-1] == HARDENING]
    terms = [term for values in sown for term in values]  # one per FFF layer
    if not terms:
        raise ValueError(f"fff_hardening={weight} but no FFF layer sowed a hardening term (feedforward?)")
    return hidden, weight * jnp.mean(jnp.stack(terms))
