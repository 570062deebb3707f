"""Sparse FFF training on GPU: the backward pass of the routed forward as three Pallas (Triton) kernels.

Shape legend: as ``fff_pallas_routed`` (T tokens, HP hidden padded, N = 2^(D+1) - 1 nodes, LS bottom levels
per subtree, LU = D + 1 - LS top levels, G = 2^LU buckets, SW = 2^LS subtree tile columns, AW top columns,
TB tokens per tile, HC hidden columns per chunk, TP = T rounded up to the routing block).

Only the L = LU + LS nodes on a token's path get gradient (``ufbert_jax.fff_math.path_vjp`` is the
reference). The forward, ``fff_pallas_routed.forward(save_logits=True)``, leaves the bucket table and every
token's path logits (``Routing``), so nothing is walked twice. The backward:

1. path gradients (one program per run of at most TB tokens of one bucket, the forward's work items):
   g_a = G W_out[rows]^T as two tile products per hidden chunk (the subtree's rows, the bucket's top path
   rows), dz = round(g_a) GELU'(z) on the path and 0 elsewhere; it writes per token dz and the rounded
   activations, and dx = dZ W_in[rows] (two tile products per chunk).
2. weight gradients (one program per item of at most RUNS runs of one bucket and per hidden chunk): loops
   over its runs, accumulating dZ^T X and act^T g in float32 for the bucket's SW subtree columns and its AW
   top path columns on tensor cores, and writes them as partial sums, without atomics. Bounding an item's
   runs bounds every program's work under any routing skew (at random initialisation in the model, most
   tokens can crowd into a few buckets).
3. gradient rows (one program per bucket and hidden chunk): adds the bucket's item partials and stores its
   subtree's rows in heap order (the bucket owns them) and its sums for the top path columns; one small
   segment sum in XLA adds the G * AW top sums into the 2^LU - 1 top rows that all buckets share.

dZ and X (act and g) enter the tile products in the weights' dtype (bfloat16), with float32 accumulation;
the masked form's gradients are the same sums in another order and rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .fff_pallas_routed import (
    TOP_COLUMNS,
    Routing,
    locate_item,
    path_rows,
    run_tokens,
    subtree_path,
    subtree_rows,
    work_items,
)
from .pallas_math import Tiling, dot, gelu, gelu_grad, pick

# Runs of TB tokens that one weight-gradient program reduces: bounds every program's work under any routing
# skew (a program per bucket would serialise a crowded bucket), at the price of partial sums that XLA adds.
RUNS = 8


def _columns(chunk, block_hidden: int):
    """(pl.ds of the chunk's columns, [1, HC] int32 column ids for array-indexed stores)."""
    start = pl.multiple_of(chunk * block_hidden, block_hidden)
    return pl.ds(start, block_hidden), start + lax.broadcasted_iota(jnp.int32, (1, block_hidden), 1)


def _store_rows(ref, rows: jax.Array, values: jax.Array) -> None:
    """ref[rows, :] = values for a [R] int32 row vector and [R, W] values (both indices as arrays)."""
    column = lax.broadcasted_iota(jnp.int32, (1, values.shape[1]), 1)
    plgpu.store(ref.at[rows[:, None], column], values.astype(ref.dtype))


def _path_grads_kernel(counts_ref, members_ref, top_logits_ref, sub_logits_ref, g_ref, w_in_ref, w_out_ref,
                       dx_ref, dz_sub_ref, act_sub_ref, dz_top_ref, act_top_ref, *, top_levels, sub_levels,
                       tile_tokens, block_hidden):  # fmt: skip
    """Step 1, one work item: dz and activations of its tokens' path nodes, and their dx rows.

    counts_ref [G] float32; members_ref [G, T + TR] int32; top_logits_ref [TP, AW], sub_logits_ref [T, SW]
    float32; g_ref, dx_ref [T, HP]; w_in_ref, w_out_ref [N, HP]; dz_sub_ref [T, SW] float32, act_sub_ref
    [T, SW] weights' dtype; dz_top_ref [T, AW] float32, act_top_ref [T, AW] weights' dtype.
    """
    buckets, width = 2**top_levels, 2**sub_levels
    dtype = w_out_ref.dtype
    bucket, first, count = locate_item(counts_ref, buckets, tile_tokens)

    @pl.when(bucket < buckets)
    def _():
        token, _ = run_tokens(members_ref, bucket, first, count, tile_tokens)  # [TB]
        sub_rows = subtree_rows(bucket, top_levels, sub_levels)  # [SW]
        top_rows = path_rows(bucket, top_levels)  # [AW]
        z_sub = sub_logits_ref[token, pl.ds(0, width)]  # [TB, SW] gather
        z_top = top_logits_ref[token, pl.ds(0, TOP_COLUMNS)]  # [TB, AW] gather
        chunks = g_ref.shape[1] // block_hidden

        def add_chunk(chunk, carry):
            g_sub, g_top = carry
            columns, _ = _columns(chunk, block_hidden)
            g = g_ref[token, columns]  # [TB, HC]
            return (
                g_sub + dot(g, w_out_ref[sub_rows, columns], trans_b=True),  # [TB, HC] x [SW, HC]^T
                g_top + dot(g, w_out_ref[top_rows, columns], trans_b=True),  # [TB, HC] x [AW, HC]^T
            )

        zeros = (
            jnp.zeros((tile_tokens, width), jnp.float32),
            jnp.zeros((tile_tokens, TOP_COLUMNS), jnp.float32),
        )
        g_sub, g_top = lax.fori_loop(0, chunks, add_chunk, zeros)
        top_on_path = lax.broadcasted_iota(jnp.int32, z_top.shape, 1) < top_levels  # [TB, AW]
        grads = []
        for z, g_a, on_path in ((z_sub, g_sub, subtree_path(z_sub, sub_levels)), (z_top, g_top, top_on_path)):
            # The activation's cotangent rounded to the weights' dtype, as the masked form's.
            dz = jnp.where(on_path, g_a.astype(dtype).astype(jnp.float32) * gelu_grad(z), 0.0)
            grads.append((dz, jnp.where(on_path, gelu(z), 0.0).astype(dtype)))
        (dz_sub, act_sub), (dz_top, act_top) = grads
        _store_rows(dz_sub_ref, token, dz_sub)
        _store_rows(act_sub_ref, token, act_sub)
        _store_rows(dz_top_ref, token, dz_top)
        _store_rows(act_top_ref, token, act_top)
        dz_sub, dz_top = dz_sub.astype(dtype), dz_top.astype(dtype)

        def store_chunk(chunk, carry):
            columns, column_ids = _columns(chunk, block_hidden)
            dx = dot(dz_sub, w_in_ref[sub_rows, columns]) + dot(dz_top, w_in_ref[top_rows, columns])
            plgpu.store(dx_ref.at[token[:, None], column_ids], dx.astype(dx_ref.dtype))  # [TB, HC]
            return carry

        lax.fori_loop(0, chunks, store_chunk, 0)


def _zero_sums(width: int, block_hidden: int) -> tuple:
    """Zero (dw_in sub, dw_out sub, dw_in top, dw_out top, db sub, db top) sums: [SW, HC] x 2, [AW, HC] x 2,
    [SW], [AW] float32, the carry of steps 2 and 3."""
    sub = jnp.zeros((width, block_hidden), jnp.float32)
    top = jnp.zeros((TOP_COLUMNS, block_hidden), jnp.float32)
    return sub, sub, top, top, jnp.zeros((width,), jnp.float32), jnp.zeros((TOP_COLUMNS,), jnp.float32)


def _weight_grads_kernel(counts_ref, members_ref, x_ref, g_ref, dz_sub_ref, act_sub_ref, dz_top_ref,
                         act_top_ref, in_ref, out_ref, db_ref, *, top_levels, sub_levels, tile_tokens,
                         block_hidden):  # fmt: skip
    """Step 2, one (work item, hidden chunk): partial gradient sums over a run of at most RUNS * TB tokens
    of one bucket, for the SW subtree columns and the AW top path columns.

    counts_ref [G] float32; members_ref [G, T + TR] int32; x_ref, g_ref [T, HP]; dz_*_ref, act_*_ref as
    step 1 writes them; in_ref, out_ref [I * (SW + AW), HP] float32 (dw_in, dw_out partials: rows of item i
    from i * (SW + AW), its SW subtree columns then its AW top columns); db_ref [I * (SW + AW)] float32.
    Items without work write nothing (``backward`` drops their rows).
    """
    buckets, width = 2**top_levels, 2**sub_levels
    bucket, first, count = locate_item(counts_ref, buckets, RUNS * tile_tokens)
    item, chunk = pl.program_id(0), pl.program_id(1)  # read here: the interpreter has none inside pl.when
    columns, column_ids = _columns(chunk, block_hidden)

    def add_run(run, acc):
        token, valid = run_tokens(members_ref, bucket, first + run * tile_tokens, count - run * tile_tokens,
                                  tile_tokens)  # fmt: skip
        valid = valid[:, None]  # [TB, 1]: lanes past the run's end add nothing
        x, g = x_ref[token, columns], g_ref[token, columns]  # [TB, HC] each
        dz_sub = jnp.where(valid, dz_sub_ref[token, pl.ds(0, width)], 0.0)  # [TB, SW]
        dz_top = jnp.where(valid, dz_top_ref[token, pl.ds(0, TOP_COLUMNS)], 0.0)  # [TB, AW]
        act_sub = jnp.where(valid, act_sub_ref[token, pl.ds(0, width)], 0).astype(x.dtype)  # [TB, SW]
        act_top = jnp.where(valid, act_top_ref[token, pl.ds(0, TOP_COLUMNS)], 0).astype(x.dtype)  # [TB, AW]
        in_sub, out_sub, in_top, out_top, db_sub, db_top = acc
        return (
            in_sub + dot(dz_sub.astype(x.dtype), x, trans_a=True),  # [TB, SW]^T x [TB, HC]
            out_sub + dot(act_sub, g, trans_a=True),
            in_top + dot(dz_top.astype(x.dtype), x, trans_a=True),  # [TB, AW]^T x [TB, HC]
            out_top + dot(act_top, g, trans_a=True),
            db_sub + jnp.sum(dz_sub, axis=0),
            db_top + jnp.sum(dz_top, axis=0),
        )

    @pl.when(bucket < buckets)
    def _():
        zeros = _zero_sums(width, block_hidden)
        runs = (count + tile_tokens - 1) // tile_tokens
        in_sub, out_sub, in_top, out_top, db_sub, db_top = lax.fori_loop(0, runs, add_run, zeros)
        base = item * (width + TOP_COLUMNS)
        sub_rows = base + lax.broadcasted_iota(jnp.int32, (width,), 0)  # [SW]
        top_rows = base + width + lax.broadcasted_iota(jnp.int32, (TOP_COLUMNS,), 0)  # [AW]
        for ref, sub_sum, top_sum in ((in_ref, in_sub, in_top), (out_ref, out_sub, out_top)):
            plgpu.store(ref.at[sub_rows[:, None], column_ids], sub_sum)
            plgpu.store(ref.at[top_rows[:, None], column_ids], top_sum)

        @pl.when(chunk == 0)
        def _():
            plgpu.store(db_ref.at[sub_rows], db_sub)
            plgpu.store(db_ref.at[top_rows], db_top)


def _gradient_rows_kernel(counts_ref, in_part_ref, out_part_ref, db_part_ref, dw_in_ref, dw_out_ref, db_ref,
                          top_in_ref, top_out_ref, top_db_ref, *, top_levels, sub_levels, tile_tokens,
                          block_hidden):  # fmt: skip
    """Step 3, one (bucket, hidden chunk): the sum of the bucket's item partials, stored as heap-order rows.

    counts_ref [G] float32; *_part_ref as step 2 writes them; dw_in_ref, dw_out_ref [N, HP] and db_ref [N]
    float32: the subtree rows (rows 0 .. 2^LU - 2 are ``backward``'s to write); top_in_ref, top_out_ref
    [G * AW, HP] and top_db_ref [G * AW] float32: each bucket's sums for its top path columns.
    """
    buckets, width = 2**top_levels, 2**sub_levels
    bucket, chunk = pl.program_id(0), pl.program_id(1)
    columns, column_ids = _columns(chunk, block_hidden)
    counts = counts_ref[pl.ds(0, buckets)].astype(jnp.int32)  # [G]
    item_tokens = RUNS * tile_tokens
    items = (counts + item_tokens - 1) // item_tokens  # [G], numbered as locate_item numbers them
    first = pick(jnp.cumsum(items), bucket) - pick(items, bucket)
    sub_lane = lax.broadcasted_iota(jnp.int32, (width,), 0)
    top_lane = lax.broadcasted_iota(jnp.int32, (TOP_COLUMNS,), 0)

    def add_item(item, acc):
        base = (first + item) * (width + TOP_COLUMNS)
        sub_rows, top_rows = base + sub_lane, base + width + top_lane
        in_sub, out_sub, in_top, out_top, db_sub, db_top = acc
        return (
            in_sub + in_part_ref[sub_rows, columns],  # [SW, HC]
            out_sub + out_part_ref[sub_rows, columns],
            in_top + in_part_ref[top_rows, columns],  # [AW, HC]
            out_top + out_part_ref[top_rows, columns],
            db_sub + db_part_ref[sub_rows],
            db_top + db_part_ref[top_rows],
        )

    zeros = _zero_sums(width, block_hidden)
    in_sub, out_sub, in_top, out_top, db_sub, db_top = lax.fori_loop(0, pick(items, bucket), add_item, zeros)
    # The idle last column is no node: its (zero) row goes to row 0, which backward overwrites with the top
    # rows (a masked store would do on a GPU, but the interpreter stores masked lanes' old values).
    rows = jnp.where(sub_lane < width - 1, subtree_rows(bucket, top_levels, sub_levels), 0)  # [SW]
    top_rows = bucket * TOP_COLUMNS + top_lane  # [AW]
    for ref, sub_sum, top_ref, top_sum in (
        (dw_in_ref, in_sub, top_in_ref, in_top),
        (dw_out_ref, out_sub, top_out_ref, out_top),
    ):
        plgpu.store(ref.at[rows[:, None], column_ids], sub_sum)
        plgpu.store(top_ref.at[top_rows[:, None], column_ids], top_sum)

    @pl.when(chunk == 0)
    def _():
        plgpu.store(db_ref.at[rows], db_sub)
        plgpu.store(top_db_ref.at[top_rows], db_top)


def _top_ancestors(top_levels: int) -> np.ndarray:
    """[G * AW] int32: the global row of bucket b's path node at level j (b-major), 2^LU - 1 past LU."""
    buckets = 2**top_levels
    bucket, level = np.meshgrid(np.arange(buckets), np.arange(TOP_COLUMNS), indexing="ij")  # [G, AW] each
    ancestor = 2**level - 1 + np.right_shift(bucket, np.maximum(top_levels - level, 0))
    return np.where(level < top_levels, ancestor, buckets - 1).reshape(-1).astype(np.int32)


def backward(x, w_in, w_out, routing: Routing, g, *, sub_levels: int, tile: Tiling, interpret: bool):
    """The routed forward's VJP: (dx [T, HP], dw_in [N, HP], db_in [N], dw_out [N, HP]), weights' grads f32.

    x, g [T, HP]; w_in, w_out [N, HP]; routing: what ``fff_pallas_routed.forward(save_logits=True)`` left.
    tile: the tiling of both steps (TB tokens, HC hidden columns; HP a multiple of HC).
    """
    tokens, padded_hidden = x.shape
    nodes = w_in.shape[0]
    top_levels = nodes.bit_length() - sub_levels
    buckets, width = 2**top_levels, 2**sub_levels
    sizes = dict(
        top_levels=top_levels, sub_levels=sub_levels, tile_tokens=tile.tokens, block_hidden=tile.hidden
    )
    params = plgpu.CompilerParams(num_warps=tile.warps, num_stages=tile.stages)
    dx, dz_sub, act_sub, dz_top, act_top = pl.pallas_call(
        functools.partial(_path_grads_kernel, **sizes),
        out_shape=(
            jax.ShapeDtypeStruct(x.shape, x.dtype),  # dx
            jax.ShapeDtypeStruct((tokens, width), jnp.float32),  # dz of the subtree's nodes
            jax.ShapeDtypeStruct((tokens, width), w_out.dtype),  # their rounded activations
            jax.ShapeDtypeStruct((tokens, TOP_COLUMNS), jnp.float32),  # dz of the top path nodes
            jax.ShapeDtypeStruct((tokens, TOP_COLUMNS), w_out.dtype),  # their rounded activations
        ),
        grid=(work_items(tokens, top_levels, tile.tokens),),
        compiler_params=params,
        interpret=interpret,
        name="fff_path_grads",
    )(routing.counts, routing.members, routing.top_logits, routing.sub_logits, g, w_in, w_out)
    items = work_items(tokens, top_levels, RUNS * tile.tokens)
    partials = pl.pallas_call(
        functools.partial(_weight_grads_kernel, **sizes),
        out_shape=(
            *[jax.ShapeDtypeStruct((items * (width + TOP_COLUMNS), padded_hidden), jnp.float32)] * 2,
            jax.ShapeDtypeStruct((items * (width + TOP_COLUMNS),), jnp.float32),
        ),
        grid=(items, padded_hidden // tile.hidden),
        compiler_params=params,
        interpret=interpret,
        name="fff_weight_grads",
    )(routing.counts, routing.members, x, g, dz_sub, act_sub, dz_top, act_top)
    dw_in, dw_out, db_in, *top_partials = pl.pallas_call(
        functools.partial(_gradient_rows_kernel, **sizes),
        out_shape=(
            *[jax.ShapeDtypeStruct((nodes, padded_hidden), jnp.float32)] * 2,  # dw_in, dw_out
            jax.ShapeDtypeStruct((nodes,), jnp.float32),  # db_in
            *[jax.ShapeDtypeStruct((buckets * TOP_COLUMNS, padded_hidden), jnp.float32)] * 2,
            jax.ShapeDtypeStruct((buckets * TOP_COLUMNS,), jnp.float32),
        ),
        grid=(buckets, padded_hidden // tile.hidden),
        compiler_params=params,
        interpret=interpret,
        name="fff_gradient_rows",
    )(routing.counts, *partials)
    # The 2^LU - 1 top rows, shared by all buckets: a segment sum of the G * AW per-bucket top sums,
    # written in place over the rows that step 3 left.
    ancestors = jnp.asarray(_top_ancestors(top_levels))  # [G * AW], 2^LU - 1 for unused columns
    dw_in, dw_out, db_in = (
        rows.at[: buckets - 1].set(jax.ops.segment_sum(top, ancestors, buckets)[: buckets - 1])
        for rows, top in zip(
            (dw_in, dw_out, db_in), (top_partials[0], top_partials[1], top_partials[2]), strict=True
        )
    )
    return dx, dw_in, db_in, dw_out
