"""FFF variants (soft routing, hardening loss, child transpositions) against float64 NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.reference_numpy import gelu
from ufbert_jax import fff, fff_math, fff_variants
from ufbert_jax.analysis import capture
from ufbert_jax.config import preset
from ufbert_jax.model import FastFeedForward, MaskedLM
from ufbert_jax.train.optim import OptimizerConfig, make_optimizer
from ufbert_jax.train.steps import mlm_loss, train_step

TOL = 2e-5  # float32 against float64, relative to the largest output
SMALL = dict(vocab_size=64, hidden=16, heads=2, max_len=8, fff_impl="masked")  # a 2-layer model, 2x3 trees


def mlm_batch(rng, cfg, rows):
    """A batch for mlm_loss: random ids [rows, S], the first 2 positions predicted."""
    ids = rng.integers(7, cfg.vocab_size, (rows, cfg.max_len)).astype(np.int32)
    positions = np.tile(np.arange(2, dtype=np.int32), (rows, 1))
    return {"input_ids": ids, "positions": positions, "labels": ids[:, :2]}


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def draw(rng, trees, depth, hidden, tokens=6):
    """Gaussian float32 operands: x [T, H], w_in/w_out [K, N, H], b_in [K, N]."""
    nodes = 2 ** (depth + 1) - 1
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    w_in = (rng.standard_normal((trees, nodes, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b_in = (0.3 * rng.standard_normal((trees, nodes))).astype(np.float32)
    w_out = rng.standard_normal((trees, nodes, hidden)).astype(np.float32)
    return x, w_in, b_in, w_out


def draw_exact(rng, trees, depth, hidden, tokens=6):
    """Operands whose logits float32 computes exactly and which are never 0, so routing is unambiguous.

    x integers in [-3, 3], w_in multiples of 1/8, b_in odd multiples of 1/16: every logit is an odd multiple
    of 1/16 below 2^10 in magnitude.
    """
    nodes = 2 ** (depth + 1) - 1
    x = rng.integers(-3, 4, (tokens, hidden)).astype(np.float32)
    w_in = (rng.integers(-4, 5, (trees, nodes, hidden)) / 8).astype(np.float32)
    b_in = ((2 * rng.integers(-8, 8, (trees, nodes)) + 1) / 16).astype(np.float32)
    w_out = (rng.standard_normal((trees, nodes, hidden)) / hidden).astype(np.float32)
    return x, w_in, b_in, w_out


def f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def soft_reference(x, w_in, b_in, w_out, flip=None):
    """Token by token: F_n = GELU(z_n) w_out[n] + (1 - s_n) F_{2n+1} + s_n F_{2n+2}, s_n = sigmoid(z_n)
    (1 - sigmoid(z_n) where flipped); y = sum over trees of F_0."""
    x, w_in, b_in, w_out = f64(x, w_in, b_in, w_out)
    trees, nodes, _ = w_in.shape

    def subtree(t, k, n):
        z = x[t] @ w_in[k, n] + b_in[k, n]
        out = gelu(z) * w_out[k, n]
        if 2 * n + 1 < nodes:
            s = sigmoid(z)
            if flip is not None and flip[t, k, n]:
                s = 1.0 - s
            out = out + (1.0 - s) * subtree(t, k, 2 * n + 1) + s * subtree(t, k, 2 * n + 2)
        return out

    return np.stack([sum(subtree(t, k, 0) for k in range(trees)) for t in range(x.shape[0])])


def hard_reference(x, w_in, b_in, w_out, flip):
    """Token by token: walk each tree, going right when z > 0, the other way where flipped."""
    x, w_in, b_in, w_out = f64(x, w_in, b_in, w_out)
    trees, nodes, _ = w_in.shape
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(trees):
            n = 0
            while n < nodes:
                z = x[t] @ w_in[k, n] + b_in[k, n]
                y[t] += gelu(z) * w_out[k, n]
                right = (z > 0) != bool(flip[t, k, n])
                n = 2 * n + 2 if right else 2 * n + 1
    return y


def entropy_reference(x, w_in, b_in):
    """Mean over tokens, trees and internal nodes of -s ln s - (1 - s) ln(1 - s), s = sigmoid(z)."""
    x, w_in, b_in = f64(x, w_in, b_in)
    internal = (w_in.shape[1] + 1) // 2 - 1
    z = np.einsum("th,knh->tkn", x, w_in[:, :internal]) + b_in[:, :internal]
    s = 1.0 / (1.0 + np.exp(-z))
    return float((-s * np.log(s) - (1 - s) * np.log(1 - s)).mean())


def close(got, expected):
    err = np.abs(np.asarray(got, np.float64) - expected).max()
    assert err <= TOL * max(1.0, np.abs(expected).max()), err


SHAPES = [(1, 0, 8), (1, 1, 16), (2, 3, 16), (3, 2, 8)]


@pytest.mark.parametrize("trees,depth,hidden", SHAPES)
@pytest.mark.parametrize("flipped", [False, True])
def test_soft_matches_float64_recursion(rng, trees, depth, hidden, flipped):
    x, w_in, b_in, w_out = draw(rng, trees, depth, hidden)
    flip = rng.random((x.shape[0], *b_in.shape)) < 0.3 if flipped else None
    got = jax.jit(fff_variants.soft)(x, w_in, b_in, w_out, flip)
    close(got, soft_reference(x, w_in, b_in, w_out, flip))


@pytest.mark.parametrize("trees,depth,hidden", SHAPES)
def test_hard_with_transpositions_matches_float64_walk(rng, trees, depth, hidden):
    x, w_in, b_in, w_out = draw_exact(rng, trees, depth, hidden)
    flip = rng.random((x.shape[0], *b_in.shape)) < 0.3
    close(jax.jit(fff_variants.hard)(x, w_in, b_in, w_out, flip), hard_reference(x, w_in, b_in, w_out, flip))
    no_flip = np.zeros_like(flip)
    close(fff_variants.hard(x, w_in, b_in, w_out, no_flip), hard_reference(x, w_in, b_in, w_out, no_flip))


def test_hard_without_transpositions_is_the_original(rng):
    x, w_in, b_in, w_out = draw(rng, 2, 3, 16)
    no_flip = np.zeros((x.shape[0], *b_in.shape), bool)
    np.testing.assert_array_equal(
        fff_variants.hard(x, w_in, b_in, w_out, no_flip), fff_math.masked(x, w_in, b_in, w_out)
    )


def test_reach_weights_are_probabilities_per_level(rng):
    right = jnp.asarray(rng.random((5, 2, 15)), jnp.float32)  # [T, K, N], D = 3
    reach = np.asarray(fff_variants.reach_weights(right), np.float64)
    for level in range(4):
        np.testing.assert_allclose(reach[..., 2**level - 1 : 2 ** (level + 1) - 1].sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("trees,depth,hidden", [(1, 0, 8), (2, 3, 16), (3, 2, 8)])
def test_decision_entropy_matches_float64(rng, trees, depth, hidden):
    x, w_in, b_in, _ = draw(rng, trees, depth, hidden)
    got = float(fff_variants.decision_entropy(x, w_in, b_in))
    expected = entropy_reference(x, w_in, b_in) if depth else 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_soft_routing_gradient_matches_float64_finite_differences(rng):
    x, w_in, b_in, w_out = draw(rng, 2, 2, 8, tokens=4)
    cotangent = rng.standard_normal(x.shape)
    grad = jax.grad(lambda b: jnp.sum(fff_variants.soft(x, w_in, b, w_out) * cotangent))(jnp.asarray(b_in))
    step, expected = 1e-6, np.zeros(b_in.shape)
    for index in np.ndindex(*b_in.shape):
        up, down = np.array(b_in, np.float64), np.array(b_in, np.float64)
        up[index] += step
        down[index] -= step
        diff = soft_reference(x, w_in, up, w_out) - soft_reference(x, w_in, down, w_out)
        expected[index] = np.sum(diff * cotangent) / (2 * step)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_the_default_config_runs_fff_apply_without_a_variant(rng):
    cfg = preset("tiny-fff", fff_impl="masked")
    layer = FastFeedForward(cfg, nnx.Rngs(int(rng.integers(2**31))))
    assert layer.variant is None and not fff_variants.wanted(cfg)
    h = jnp.asarray(rng.standard_normal((2, 5, cfg.hidden)), jnp.float32)
    expected = fff.apply(h, layer.w_in[...], layer.b_in[...], layer.w_out[...], impl="masked")
    np.testing.assert_array_equal(layer(h), expected)


def test_the_hardening_loss_alone_keeps_the_original_output(rng):
    cfg = preset("tiny-fff", fff_impl="masked", fff_hardening=0.5)
    layer = FastFeedForward(cfg, nnx.Rngs(int(rng.integers(2**31))))
    assert not jax.tree.leaves(nnx.state(layer.variant))  # no parameters, no RNG stream
    h = jnp.asarray(rng.standard_normal((2, 5, cfg.hidden)), jnp.float32)
    expected = fff.apply(h, layer.w_in[...], layer.b_in[...], layer.w_out[...], impl="masked")
    np.testing.assert_array_equal(layer(h), expected)


def test_transpositions_swap_each_decision_with_probability_p(rng):
    # Depth 1, a root logit of +8 for every token: without transpositions every token goes right (node 2).
    p, tokens, hidden = 0.25, 4096, 8
    cfg = preset("tiny-fff", hidden=hidden, fff_trees=1, fff_depth=1, fff_transpose=p)
    layer = FastFeedForward(cfg, nnx.Rngs(int(rng.integers(2**31))))
    w_out = np.zeros((1, 3, hidden), np.float32)
    w_out[0, 1, 0] = 1.0  # the output's first feature is GELU of the left child's logit, 0 for right
    layer.w_in[...] = jnp.zeros((1, 3, hidden))
    layer.b_in[...] = jnp.asarray([[8.0, 1.0, 1.0]])  # GELU(1) > 0 marks a left turn
    layer.w_out[...] = jnp.asarray(w_out)
    h = jnp.zeros((1, tokens, hidden))
    first, second = (np.asarray(layer(h))[0, :, 0] > 0 for _ in range(2))
    for left in (first, second):
        assert abs(left.mean() - p) < 6 * math.sqrt(p * (1 - p) / tokens)  # binomial: 6 sigma
    assert (first != second).any()  # fresh draws on every call


def test_hardening_reaches_the_mlm_loss_as_weight_times_mean_layer_entropy(rng):
    weight = 0.7
    base = preset("tiny-fff", **SMALL, fff_routing="soft")
    plain, hardened = (MaskedLM(base.replace(fff_hardening=h), nnx.Rngs(3)) for h in (0.0, weight))
    for model in (plain, hardened):
        model.eval()
    batch = mlm_batch(rng, base, rows=2)
    (loss, metrics), (plain_loss, _) = mlm_loss(hardened, batch), mlm_loss(plain, batch)
    inputs = capture.fff_inputs(plain, jnp.asarray(batch["input_ids"]))  # [B, S, H] per layer
    layers = [layer.ffn for layer in plain.encoder.layers]
    expected = weight * np.mean(
        [
            entropy_reference(x.reshape(-1, base.hidden), f.w_in[...], f.b_in[...])
            for x, f in zip(inputs, layers, strict=True)
        ]
    )
    np.testing.assert_allclose(float(metrics["loss"]), float(plain_loss), rtol=1e-6)
    np.testing.assert_allclose(float(loss - metrics["loss"]), expected, rtol=1e-4)


def test_train_step_runs_soft_routing_with_hardening_and_transpositions(rng):
    cfg = preset("tiny-fff", **SMALL, fff_routing="soft", fff_hardening=0.1, fff_transpose=0.1)
    model = MaskedLM(cfg, nnx.Rngs(0))
    model.eval()
    optimizer = nnx.Optimizer(model, make_optimizer(OptimizerConfig()), wrt=nnx.Param)
    before = np.asarray(model.encoder.layers[0].ffn.b_in[...])
    batch = mlm_batch(rng, cfg, rows=4)
    for _ in range(2):
        metrics = train_step(model, optimizer, batch, jnp.float32(1.0))
    assert np.isfinite(float(metrics["loss"]))
    assert not np.array_equal(np.asarray(model.encoder.layers[0].ffn.b_in[...]), before)


def test_bad_variants_are_named():
    with pytest.raises(ValueError, match="unknown FFF routing 'wobbly'"):
        preset("tiny-fff", fff_routing="wobbly")
    with pytest.raises(ValueError, match=r"fff_transpose=1\.0"):
        preset("tiny-fff", fff_transpose=1.0)
    with pytest.raises(ValueError, match="fff_hardening=-1"):
        preset("tiny-fff", fff_hardening=-1)
