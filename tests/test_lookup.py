"""lookup.embed: a row gather whose gradient is a sorted segment sum, against float64 NumPy (np.add.at)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufbert_jax import lookup


def draw_ids(rng: np.random.Generator, vocab: int, shape: tuple[int, ...]) -> np.ndarray:
    """Zipf-like ids with one id repeated at a fifth of the positions (as <mask> in an MLM batch), and
    every id of a small range at least once, so repeats, singletons and untouched rows all occur."""
    ids = np.minimum(rng.zipf(1.3, shape) - 1, vocab - 1)
    flat = ids.reshape(-1)
    flat[rng.random(flat.size) < 0.2] = int(rng.integers(vocab))
    flat[: min(8, vocab)] = np.arange(min(8, vocab))
    return ids.astype(np.int32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_sums_rows_of_repeated_ids_like_numpy(dtype, rng):
    vocab, hidden = 64, 16
    ids = draw_ids(rng, vocab, (4, 32))  # [B, S]
    table = rng.standard_normal((vocab, hidden)).astype(np.float32)  # [V, H]
    cotangent = rng.standard_normal((4, 32, hidden)).astype(np.float32)  # [B, S, H]

    rows, vjp = jax.vjp(lambda t: lookup.embed(t, jnp.asarray(ids)), jnp.asarray(table, dtype))
    (grad,) = vjp(jnp.asarray(cotangent, dtype))

    np.testing.assert_array_equal(np.asarray(rows, np.float32), np.asarray(jnp.asarray(table, dtype))[ids])
    expected = np.zeros((vocab, hidden), np.float64)
    np.add.at(
        expected, ids.reshape(-1), np.asarray(jnp.asarray(cotangent, dtype), np.float64).reshape(-1, hidden)
    )
    assert grad.dtype == dtype
    # float32 accumulation: exact to float32 rounding of a sum of up to ~60 terms; bfloat16 rounds once.
    tolerance = 1e-5 if dtype == jnp.float32 else 8e-3
    np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=tolerance, atol=tolerance)
    untouched = np.setdiff1d(np.arange(vocab), ids)
    assert not np.any(np.asarray(grad, np.float32)[untouched])


def test_gradient_under_jit_and_grad_matches_take(rng):
    """The same gradient as jnp.take's autodiff (a scatter-add), through jit and a scalar loss."""
    ids = jnp.asarray(draw_ids(rng, 32, (3, 16)))
    table = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)
    weights = jnp.asarray(rng.standard_normal((3, 16, 8)), jnp.float32)
    ours = jax.jit(jax.grad(lambda t: jnp.sum(lookup.embed(t, ids) * weights)))(table)
    theirs = jax.grad(lambda t: jnp.sum(jnp.take(t, ids, axis=0) * weights))(table)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_ids_outside_the_vocabulary_give_nan_rows_negative_ones_included(rng):
    """One rule under jit on every backend: an id outside [0, V), negative or not, reads a NaN row (it
    never wraps around to row V + id) and its cotangent is dropped."""
    table = jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)  # [V, H]
    ids = jnp.asarray([[-1, 6, 0], [-6, 5, 100]], jnp.int32)  # [B, S]
    rows = np.asarray(jax.jit(lookup.embed)(table, ids))  # [B, S, H]
    assert np.isnan(rows[[0, 0, 1, 1], [0, 1, 0, 2]]).all()
    np.testing.assert_array_equal(rows[0, 2], table[0])
    np.testing.assert_array_equal(rows[1, 1], table[5])
    grad = jax.grad(lambda t: jnp.nansum(lookup.embed(t, ids)))(table)
    np.testing.assert_array_equal(grad, np.eye(6, dtype=np.float32)[[0, 5]].sum(0)[:, None] * np.ones(4))


def test_check_ids_names_the_first_bad_id_and_its_position():
    ids = np.array([[1, 2], [3, -1]])
    with pytest.raises(ValueError, match=r"token id -1 at \[1, 1\] is outside the vocabulary \[0, 4\)"):
        lookup.check_ids(ids, 4)
    lookup.check_ids(np.array([[0, 3]]), 4)
