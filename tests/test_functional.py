"""The functional API against the NNX modules: same outputs, gradients, per-example gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ufbert_jax import functional
from ufbert_jax.config import preset
from ufbert_jax.model import MaskedLM, SequenceClassifier

CFG = preset("tiny-fff", vocab_size=64, hidden=16, heads=2, max_len=8, fff_impl="masked")


def tokens_and_mask(rng, batch=3):
    ids = rng.integers(1, CFG.vocab_size, (batch, CFG.max_len)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, CFG.max_len // 2 :] = 0  # one padded row
    return jnp.asarray(ids * mask), jnp.asarray(mask)


def example_loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_forward_equals_the_module_for_mlm_encoder_and_classifier(rng):
    ids, mask = tokens_and_mask(rng)
    lm = MaskedLM(CFG, nnx.Rngs(1))
    classifier = SequenceClassifier(CFG, 3, nnx.Rngs(2))
    for module in (lm, lm.encoder, classifier):
        params, forward = functional.split(module)
        assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
        module.eval()
        expected = nnx.jit(lambda m, ids, mask: m(ids, mask))(module, ids, mask)
        np.testing.assert_array_equal(jax.jit(forward)(params, ids, mask), expected)


def test_params_are_the_checkpoint_layout_and_the_module_is_untouched(rng):
    lm = MaskedLM(CFG, nnx.Rngs(1))
    lm.train()
    params, _ = functional.split(lm)
    expected = nnx.to_pure_dict(nnx.state(lm, nnx.Param))
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    assert lm.encoder.embedding.dropout.deterministic is False  # split left the module in train mode


def test_changed_params_change_the_output_like_the_module(rng):
    ids, mask = tokens_and_mask(rng)
    lm = MaskedLM(CFG, nnx.Rngs(1))
    lm.eval()
    params, forward = functional.split(lm)
    scaled = jax.tree.map(lambda p: 1.5 * p, params)
    nnx.update(lm, scaled)
    np.testing.assert_array_equal(forward(scaled, ids, mask), lm(ids, mask))


def test_gradient_equals_nnx_gradient_and_per_example_gradients_stack(rng):
    ids, _ = tokens_and_mask(rng, batch=4)
    labels = jnp.asarray(rng.integers(0, CFG.vocab_size, ids.shape), jnp.int32)
    lm = MaskedLM(CFG, nnx.Rngs(1))
    lm.eval()
    params, forward = functional.split(lm)

    def loss(params, ids, labels):  # one example: [S]
        return example_loss(forward(params, ids[None])[0], labels)

    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, ids, labels)
    module_grad = nnx.jit(nnx.grad(lambda m, ids, labels: example_loss(m(ids[None])[0], labels)))
    for b in range(ids.shape[0]):
        expected = nnx.to_pure_dict(module_grad(lm, ids[b], labels[b]))
        got = jax.tree.map(lambda g, b=b: g[b], per_example)
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(g, e, rtol=2e-4, atol=1e-6)


def test_mismatched_params_are_named(rng):
    ids, mask = tokens_and_mask(rng)
    params, forward = functional.split(MaskedLM(CFG, nnx.Rngs(1)))
    del params["encoder"]["final_norm"]
    with pytest.raises(ValueError, match="missing"):
        forward(params, ids, mask)
