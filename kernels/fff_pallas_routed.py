"""Routed FFF inference for one tree on GPU: tokens grouped by subtree, every product a tile product.

Shape legend: T tokens, Hp hidden (a multiple of HC), N = 2^(D+1) - 1 nodes, D depth, S bottom levels per
subtree (``sub_levels``), U = D + 1 - S top levels, B = 2^U subtrees ("buckets"), P = max(16, 2^U) columns
of the routing tile, SW = 2^S columns of a subtree tile (its 2^S - 1 nodes and one idle column),
A = 16 >= U columns of top activations, TR tokens per routing program, TB tokens per subtree tile,
HC hidden columns per chunk, Tr = T rounded up to TR.

The per-token kernel (``fff_pallas``) gathers two weight rows per token and level: at 16384 tokens that is
590 MB of L2 traffic per call, its limit. Here tokens that share nodes share the rows, in three steps:

1. route (Pallas): a program takes TR consecutive tokens, computes the logits of the top 2^U - 1 nodes as
   one [TR, Hp] x [Hp, P] tile product (a loop over hidden chunks), walks U levels and writes per token
   its U top activations and its id into the bucket-major table ``members[bucket, slot]``: bucket is the
   level-U node it reached (as an offset within that level), slot its rank among the bucket's tokens. The
   program adds its [B] histogram to the global counts with one vector atomic add; the counts before the
   add are its base in each bucket.
2. subtree tiles (Pallas): work item w is the w-th run of at most TB tokens of one bucket (found in-kernel
   from the counts); the program gathers their x rows, computes the logits of the subtree's 2^S - 1 nodes
   as one [TB, Hp] x [Hp, SW] product, walks S levels, and writes
   y = A_top W_out[top path rows] + A_sub W_out[subtree rows], two tile products per hidden chunk: every
   token of a bucket has the same top path.

So x is read twice and y written once; weights are read once per program (P rows per routing program,
SW + A + SW rows per tile), never per token. Between the two kernels there is no sort and no XLA op but
the zeroing of B counters: the table has room for every token in every bucket ([B, T + TR] int32, 512
bytes per token at B = 128, a third of a bf16 x row; only T entries are written and read).

The slots depend on the order in which programs run, so the token order inside a bucket varies between
calls, but no result does: every row of a tile product is computed from that row alone. Lanes of a tile
past its run repeat the run's last token (the same values stored to the same row), so no store is masked.

The counters are float32 (exact below 2^24 tokens): jax 0.11.2's Triton lowering of ``atomic_add`` picks
the float add for every vector operand (it tests ``val.type`` for an integer type, which a tensor type never
is), so integer counts came back as zero on the H200.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .pallas_math import MIN_DOT, Tiling, dot, gelu, next_node, pick, round_up

MAX_TOP_LEVELS = 8  # U: the [TR, B] bucket one-hot and the [TR, P] routing tile live in registers
TOP_COLUMNS = 16  # A: top activations per token, zero past U (a tile dimension, so >= 16)


def applies(trees: int, depth: int, sub_levels: int) -> bool:
    """Whether the routed kernel serves this tree shape: one tree, 1 <= U <= MAX_TOP_LEVELS."""
    return trees == 1 and 1 <= depth + 1 - sub_levels <= MAX_TOP_LEVELS


def _route_kernel(x_ref, w_in_ref, b_ref, counts_in_ref, members_ref, acts_ref, counts_ref, *logits_ref,
                  tokens, top_levels, route_tokens, block_hidden):  # fmt: skip
    """One program: TR consecutive tokens through the top U levels.

    x_ref [T, Hp]; w_in_ref [N, Hp]; b_ref [N] float32; counts_in_ref = counts_ref [B] float32 (aliased:
    zero on entry, tokens per bucket on exit); members_ref [B, T + TR] int32; acts_ref [Tr, A] float32;
    logits_ref (for training only): [Tr, A] float32 top logits, zero past U.
    """
    del counts_in_ref  # the same buffer as counts_ref
    buckets = 2**top_levels
    width = max(MIN_DOT, buckets)  # P: rows 0 .. P-1 are the top nodes, then nodes whose logits go unused
    first = pl.program_id(0) * route_tokens
    lane = lax.broadcasted_iota(jnp.int32, (route_tokens,), 0)
    token = first + lane  # [TR]
    valid = token < tokens

    def add_chunk(chunk, logits):
        columns = pl.ds(pl.multiple_of(chunk * block_hidden, block_hidden), block_hidden)
        if tokens % route_tokens:  # ragged: rows past T compute on a real token, never counted
            x = x_ref[jnp.minimum(token, tokens - 1), columns]  # [TR, HC] row gather
        else:
            x = x_ref[pl.ds(first, route_tokens), columns]  # [TR, HC] block
        return logits + dot(x, w_in_ref[pl.ds(0, width), columns], trans_b=True)  # [TR, HC] x [P, HC]^T

    chunks = x_ref.shape[1] // block_hidden
    logits = lax.fori_loop(0, chunks, add_chunk, jnp.zeros((route_tokens, width), jnp.float32))
    logits = logits + b_ref[pl.ds(0, width)][None, :]  # [TR, P]
    level_column = lax.broadcasted_iota(jnp.int32, (route_tokens, TOP_COLUMNS), 1)
    path_logits = jnp.zeros((route_tokens, TOP_COLUMNS), jnp.float32)  # [TR, A]
    node = jnp.zeros((route_tokens,), jnp.int32)  # [TR], every token starts at the root
    for level in range(top_levels):
        logit = pick(logits, node)  # [TR]
        path_logits = jnp.where(level_column == level, logit[:, None], path_logits)
        node = next_node(node, logit)
    bucket = node - (buckets - 1)  # [TR] offset of the level-U node within its level: 0 .. B-1
    acts_ref[pl.ds(first, route_tokens), :] = jnp.where(level_column < top_levels, gelu(path_logits), 0.0)
    for ref in logits_ref:
        ref[pl.ds(first, route_tokens), :] = path_logits

    bucket_ids = lax.broadcasted_iota(jnp.int32, (route_tokens, buckets), 1)
    member = (bucket[:, None] == bucket_ids) & valid[:, None]  # [TR, B]
    counted = plgpu.atomic_add(counts_ref, pl.ds(0, buckets), jnp.sum(member.astype(jnp.float32), axis=0))
    base = jnp.broadcast_to(counted.astype(jnp.int32)[None, :], (route_tokens, buckets))  # [TR, B]
    row = lax.broadcasted_iota(jnp.int32, (route_tokens, route_tokens), 0)
    column = lax.broadcasted_iota(jnp.int32, (route_tokens, route_tokens), 1)
    earlier = (bucket[:, None] == bucket[None, :]) & (column < row)  # [TR, TR]: same bucket, earlier token
    slot = pick(base, bucket) + jnp.sum(earlier.astype(jnp.int32), axis=1)  # [TR]
    # Padding lanes (past T, last program only) write their own cells past every bucket's T slots.
    plgpu.store(
        members_ref.at[jnp.where(valid, bucket, 0), jnp.where(valid, slot, tokens + lane)],
        token,
    )


def locate_item(counts_ref, buckets: int, item_tokens: int):
    """This program's work item w = program_id(0): the w-th run of at most `item_tokens` tokens of a bucket.

    counts_ref [B] float32. Returns (bucket, first, count): bucket is B when the program has no work; first
    is the item's first slot in its bucket's row of the members table, count its tokens (1 .. item_tokens).
    Items are numbered bucket by bucket (``work_items`` bounds their number).
    """
    counts = counts_ref[pl.ds(0, buckets)].astype(jnp.int32)  # [B]
    runs = (counts + item_tokens - 1) // item_tokens  # [B] work items per bucket
    runs_end = jnp.cumsum(runs)  # [B]
    work = pl.program_id(0)
    bucket = jnp.sum((runs_end <= work).astype(jnp.int32))  # B when this program has no work
    first = (work - (pick(runs_end, bucket) - pick(runs, bucket))) * item_tokens
    return bucket, first, jnp.minimum(pick(counts, bucket) - first, item_tokens)


def run_tokens(members_ref, bucket, first, count, tile_tokens: int):
    """(token [TB] int32, valid [TB] bool): the token ids in slots first .. first + count - 1 of the bucket,
    lanes past `count` repeating the last one and marked invalid."""
    lane = lax.broadcasted_iota(jnp.int32, (tile_tokens,), 0)
    return members_ref[bucket, first + jnp.minimum(lane, count - 1)], lane < count


def subtree_rows(bucket, top_levels: int, sub_levels: int) -> jax.Array:
    """[SW] row ids of the subtree below level-U node `bucket` in heap order, then its root again (idle).

    Local node i at subtree level j (2^j - 1 <= i < 2^(j+1) - 1) is global node
    2^(U+j) - 1 + bucket * 2^j + (i - (2^j - 1)); local children are 2i+1 and 2i+2, as in the tree.
    """
    local = lax.broadcasted_iota(jnp.int32, (2**sub_levels,), 0)
    rows = jnp.zeros_like(local) + (2**top_levels - 1) + bucket  # the idle last column: the root
    for level in range(sub_levels):
        level_start = 2**level - 1
        inside = (local >= level_start) & (local < 2 * level_start + 1)
        node = 2 ** (top_levels + level) - 1 + bucket * 2**level + local - level_start
        rows = jnp.where(inside, node, rows)
    return rows


def path_rows(bucket, top_levels: int) -> jax.Array:
    """[A] row ids of the top path to level-U node `bucket` (levels 0 .. U-1), then row 0 (activation 0)."""
    level = lax.broadcasted_iota(jnp.int32, (TOP_COLUMNS,), 0)
    rows = jnp.zeros_like(level)
    for above in range(top_levels):
        ancestor = 2**above - 1 + jnp.right_shift(bucket, top_levels - above)
        rows = jnp.where(level == above, ancestor, rows)
    return rows


def subtree_path(logits: jax.Array, sub_levels: int) -> jax.Array:
    """[TB, SW] bool: the S nodes each token visits in its subtree, from the logits [TB, SW] of all of them
    (local heap order, the idle last column never visited)."""
    column = lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    node = jnp.zeros(logits.shape[:1], jnp.int32)  # [TB] local heap id, from the subtree root
    on_path = column < 0  # [TB, SW] all False
    for _ in range(sub_levels):
        hit = column == node[:, None]
        on_path = on_path | hit
        node = next_node(node, jnp.sum(jnp.where(hit, logits, 0.0), axis=1))
    return on_path


def _tile_kernel(counts_ref, members_ref, acts_ref, x_ref, w_in_ref, b_ref, w_out_ref, y_ref, *logits_ref,
                 top_levels, sub_levels, tile_tokens, block_hidden):  # fmt: skip
    """One work item: up to TB tokens of one bucket through its subtree, writing their y rows.

    counts_ref [B] float32; members_ref [B, T + TR] int32 token ids by bucket; acts_ref [Tr, A] float32;
    x_ref, y_ref [T, Hp]; w_in_ref, w_out_ref [N, Hp]; b_ref [N] float32; logits_ref (for training only):
    [T, SW] float32, the logits of the subtree's nodes for every token.
    """
    buckets, width = 2**top_levels, 2**sub_levels
    bucket, first, count = locate_item(counts_ref, buckets, tile_tokens)

    @pl.when(bucket < buckets)
    def _():
        token, _ = run_tokens(members_ref, bucket, first, count, tile_tokens)  # [TB]
        # Loaded before the logits loop, so that its latency can overlap the loop's loads.
        top_acts = acts_ref[token, pl.ds(0, TOP_COLUMNS)].astype(w_out_ref.dtype)  # [TB, A]
        sub_rows = subtree_rows(bucket, top_levels, sub_levels)  # [SW]
        top_rows = path_rows(bucket, top_levels)  # [A]
        chunks = x_ref.shape[1] // block_hidden

        def add_chunk(chunk, logits):
            columns = pl.ds(pl.multiple_of(chunk * block_hidden, block_hidden), block_hidden)
            # [TB, HC] x [SW, HC]^T
            return logits + dot(x_ref[token, columns], w_in_ref[sub_rows, columns], trans_b=True)

        logits = lax.fori_loop(0, chunks, add_chunk, jnp.zeros((tile_tokens, width), jnp.float32))
        logits = logits + b_ref[sub_rows][None, :]  # [TB, SW]
        for ref in logits_ref:  # both indices as arrays, as the y store below
            plgpu.store(ref.at[token[:, None], lax.broadcasted_iota(jnp.int32, (1, width), 1)], logits)
        # Activations rounded to the weights' dtype before the output products (fff_math's numerics).
        on_path = subtree_path(logits, sub_levels)
        sub_acts = jnp.where(on_path, gelu(logits), 0.0).astype(w_out_ref.dtype)  # [TB, SW]

        def store_chunk(chunk, carry):
            start = pl.multiple_of(chunk * block_hidden, block_hidden)
            columns = pl.ds(start, block_hidden)
            y = dot(top_acts, w_out_ref[top_rows, columns]) + dot(sub_acts, w_out_ref[sub_rows, columns])
            # Both indices as arrays: a row scatter that the interpreter can discharge too.
            column_ids = start + lax.broadcasted_iota(jnp.int32, (1, block_hidden), 1)  # [1, HC]
            plgpu.store(y_ref.at[token[:, None], column_ids], y.astype(y_ref.dtype))
            return carry

        lax.fori_loop(0, chunks, store_chunk, 0)


def route_step(x, w_in, b_in, *, sub_levels: int, tiling: Tiling, interpret: bool, save_logits: bool = False):
    """Step 1: (members [B, T + TR] int32 token ids by bucket, acts [Tr, A] float32, counts [B] float32),
    and with save_logits the top path logits [Tr, A] float32 too.

    x [T, Hp]; w_in [N, Hp]; b_in [N] float32; tiling: TR = tiling.tokens, HC = tiling.hidden.
    """
    tokens = x.shape[0]
    top_levels = w_in.shape[0].bit_length() - sub_levels  # D + 1 - S, as N = 2^(D+1) - 1
    buckets = 2**top_levels
    padded = round_up(tokens, tiling.tokens)
    kernel = functools.partial(
        _route_kernel,
        tokens=tokens,
        top_levels=top_levels,
        route_tokens=tiling.tokens,
        block_hidden=tiling.hidden,
    )
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((buckets, tokens + tiling.tokens), jnp.int32),  # members
            jax.ShapeDtypeStruct((padded, TOP_COLUMNS), jnp.float32),  # top activations
            jax.ShapeDtypeStruct((buckets,), jnp.float32),  # counts
            *[jax.ShapeDtypeStruct((padded, TOP_COLUMNS), jnp.float32)] * save_logits,  # top logits
        ),
        grid=(padded // tiling.tokens,),
        input_output_aliases={3: 2},
        compiler_params=plgpu.CompilerParams(num_warps=tiling.warps, num_stages=tiling.stages),
        interpret=interpret,
        name="fff_route",
    )(x, w_in, b_in, jnp.zeros((buckets,), jnp.float32))


class Routing(NamedTuple):
    """What the forward learnt about every token, for the training backward (``fff_pallas_backward``).

    members [B, T + TR] int32 token ids by bucket; counts [B] float32 tokens per bucket; top_logits
    [Tr, A] float32 the logits of each token's top path (zero past U); sub_logits [T, SW] float32 the
    logits of all nodes of each token's subtree.
    """

    members: jax.Array
    counts: jax.Array
    top_logits: jax.Array
    sub_logits: jax.Array


def work_items(tokens: int, top_levels: int, item_tokens: int) -> int:
    """A bound on the runs of at most `item_tokens` tokens of one bucket: sum over buckets of
    ceil(count / item_tokens) <= (T + B (item_tokens - 1)) / item_tokens."""
    return (tokens + 2**top_levels * (item_tokens - 1)) // item_tokens


def forward(
    x,
    w_in,
    b_in,
    w_out,
    *,
    sub_levels: int,
    route: Tiling,
    tile: Tiling,
    interpret: bool,
    save_logits: bool = False,
) -> jax.Array | tuple[jax.Array, Routing]:
    """y [T, Hp] from x [T, Hp], w_in, w_out [N, Hp], b_in [N] float32 (one tree); with save_logits
    (y, Routing) for the training backward.

    route, tile: the tilings of the two steps (TR, TB tokens; Hp a multiple of both hidden chunks).
    """  # fmt: skip
    members, acts, counts, *top_logits = route_step(
        x, w_in, b_in, sub_levels=sub_levels, tiling=route, interpret=interpret, save_logits=save_logits
    )
    tokens = x.shape[0]
    top_levels = w_in.shape[0].bit_length() - sub_levels
    kernel = functools.partial(
        _tile_kernel,
        top_levels=top_levels,
        sub_levels=sub_levels,
        tile_tokens=tile.tokens,
        block_hidden=tile.hidden,
    )
    y, *sub_logits = pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            *[jax.ShapeDtypeStruct((tokens, 2**sub_levels), jnp.float32)] * save_logits,
        ),
        grid=(work_items(tokens, top_levels, tile.tokens),),
        compiler_params=plgpu.CompilerParams(num_warps=tile.warps, num_stages=tile.stages),
        interpret=interpret,
        name="fff_subtrees",
    )(counts, members, acts, x, w_in, b_in, w_out)
    if not save_logits:
        return y
    return y, Routing(members, counts, *top_logits, *sub_logits)
