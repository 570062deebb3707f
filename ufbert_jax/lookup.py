"""Embedding lookup whose gradient sums rows in sorted order instead of scattering them.

Shape legend (docs/architecture.md): B batch, S sequence, H hidden, V vocabulary; T = B * S tokens.

The gradient of a row gather is a scatter-add of T cotangent rows into a [V, H] table. Real MLM batches
repeat a few ids thousands of times (the <mask> id stands at ~20% of all positions, and word frequencies
are Zipfian), and a GPU scatter-add with repeated indices serialises on atomics to the same rows. Sorting
the ids first turns it into a segment sum over contiguous runs (`indices_are_sorted=True`), which has no
contention, and accumulating in float32 keeps a row summed from thousands of tokens exact to float32
rounding where a bfloat16 scatter would round at every add.

Ids outside [0, V): concrete ids are refused before anything runs (`check_ids`, called by model.Embedding
and ufbert_jax.inference). Traced ids (under jit) follow one rule on every backend: the row of an id
outside [0, V), negative or not, is NaN (a negative id never wraps around to row V + id), so the outputs
of its sequence are NaN, and its cotangent is dropped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_ids(ids: np.ndarray, vocab: int) -> None:
    """A ValueError naming the first id of `ids` (concrete, any shape) outside [0, vocab) and its index."""
    ids = np.asarray(ids)
    bad = np.argwhere((ids < 0) | (ids >= vocab))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"token id {int(ids[index])} at [{', '.join(map(str, index))}] is outside the vocabulary "
            f"[0, {vocab}) ({len(bad)} such ids)"
        )


@jax.custom_vjp
def embed(table: jax.Array, ids: jax.Array) -> jax.Array:
    """table [V, H], ids [...] int -> table[ids] [..., H], in the table's dtype.

    An id outside [0, V), negative included, reads a NaN row (see the module docstring); callers check
    concrete ids first (`check_ids`).
    """
    vocab = table.shape[0]
    ids = jnp.where(ids < 0, vocab, ids)  # out of range like ids >= V: jnp.take would wrap a negative id
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)


def _embed_fwd(table, ids):
    return embed(table, ids), (ids, table)  # the table only for its shape and dtype: no copy is kept


def _embed_bwd(residuals, cotangent):
    ids, table = residuals
    (vocab, hidden), dtype = table.shape, table.dtype
    flat_ids = ids.reshape(-1)  # [T]
    rows = cotangent.reshape(-1, hidden).astype(jnp.float32)  # [T, H]
    order = jnp.argsort(flat_ids)  # [T]
    grad = jax.ops.segment_sum(
        rows[order], flat_ids[order], num_segments=vocab, indices_are_sorted=True
    )  # [V, H]; ids outside [0, V) are dropped, as the gradient of a NaN row
    return grad.astype(dtype), None


embed.defvjp(_embed_fwd, _embed_bwd)
