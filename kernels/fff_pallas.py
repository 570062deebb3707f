"""Conditional FFF inference as Pallas (Triton) GPU kernels, behind one entry point ``fff_pallas``.

Shape legend: T tokens, H hidden (Hp once padded), K trees, N = 2^(D+1) - 1 nodes per tree (heap order),
D depth, TB tokens per program, HC hidden columns per chunk.

Two kernels, chosen per call by shape (``BlockSizes.routed_min_tokens``):
  * routed (``fff_pallas_routed``): one tree, enough tokens: tokens grouped by the subtree they reach, so
    that every weight row is read once per group and every product is a tile product on tensor cores;
  * per token (this module): any K and D, any T. Each program takes TB tokens and walks every tree for
    them, one gathered row of w_in and w_out per token and level (a vectorised pointer gather), a float32
    dot product and axpy. Bounded by the L2 traffic of those gathers once paths diverge.

Numerics follow ``ufbert_jax.fff_math`` (see ``pallas_math``). ``fff_pallas`` is a forward only;
``fff_pallas_train`` is the training form: the routed forward saving its routing and the path-only
backward kernels of ``fff_pallas_backward`` where the routed kernel applies, else the masked form.
``ufbert_jax.fff`` makes ``fff_pallas`` differentiable through ``fff_pallas_train``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ufbert_jax import fff_math

from . import fff_pallas_backward, fff_pallas_routed
from .pallas_math import MIN_DOT, Tiling, gelu, next_node, pad_hidden, round_up


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Kernel choice and each kernel's tiling; the defaults are the fastest measured for 1x11 on an H200.

    Measurements in docs/gpu_kernel.md.

    routed_min_tokens: calls with at least this many tokens use the routed kernel where it applies (one
        tree, 1 <= D + 1 - sub_levels <= 8, bfloat16 unless routed_float32); None: never. The
        crossover with the per-token kernel lies between 4096 and 8192 tokens (bf16, 1x11, H200).
    routed_float32: use the routed kernel for other dtypes too (float32 is tested). Off by default: Triton's
        IEEE float32 tile products run on CUDA cores and are slow (1717 us against 23.5 us per-token at 2048
        tokens).
    sub_levels: S, the bottom levels that a routed subtree tile covers (2^S-wide tile products, S >= 4).
    route, tile: the routed kernel's routing step and subtree tiles.
    per_token: the per-token kernel.
    H is padded to a multiple of the hidden chunk of every kernel that runs.
    """

    routed_min_tokens: int | None = 8192
    routed_float32: bool = False
    sub_levels: int = 5
    route: Tiling = dataclasses.field(default_factory=lambda: Tiling(tokens=64, warps=4, hidden=64, stages=4))
    tile: Tiling = dataclasses.field(default_factory=lambda: Tiling(tokens=64, warps=4, hidden=64, stages=4))
    per_token: Tiling = dataclasses.field(default_factory=lambda: Tiling(tokens=16, warps=8))

    def __post_init__(self):
        if 2**self.sub_levels < MIN_DOT:
            raise ValueError(f"sub_levels={self.sub_levels} must be >= 4 (2^S-wide tile products)")


def _gathered_level(xs, w_in_ref, b_ref, row, chunks):
    """One tree level by per-token row gathers: row [TB] int32 global row ids -> [TB] float32 logits.

    xs: per chunk the [TB, HC] x tile. The chunks' products are summed elementwise first and reduced across
    columns once: a cross-thread reduction costs shared-memory round trips and barriers, so one per level.
    """
    products = sum(
        x.astype(jnp.float32) * w_in_ref[row, chunk].astype(jnp.float32)  # [TB, HC] gather
        for x, chunk in zip(xs, chunks, strict=True)
    )  # [TB, HC]
    return b_ref[row] + jnp.sum(products, axis=1)


def _per_token_kernel(x_ref, w_in_ref, b_ref, w_out_ref, y_ref, *, tokens, nodes, depth, block_tokens,
                      block_hidden):  # fmt: skip
    """One program: TB consecutive tokens through all K trees, writing their output rows.

    x_ref [T, Hp]; y_ref [Tp, Hp] (T rounded up to TB); w_in_ref, w_out_ref [K * N, Hp]; b_ref [K * N].
    """
    trees = w_in_ref.shape[0] // nodes
    token = pl.program_id(0) * block_tokens + lax.broadcasted_iota(jnp.int32, (block_tokens,), 0)  # [TB]
    source = jnp.minimum(token, tokens - 1)  # [TB], padding rows compute on a real token, stored apart
    chunks = [pl.ds(c, block_hidden) for c in range(0, x_ref.shape[1], block_hidden)]
    xs = [x_ref[source, chunk] for chunk in chunks]  # per chunk [TB, HC], held for every level
    visited = []  # per (tree, level): ([TB] row ids, [TB] float32 activations rounded to the weights' dtype)
    for tree in range(trees):
        node = jnp.zeros((block_tokens,), jnp.int32)  # [TB]
        for _ in range(depth + 1):
            row = tree * nodes + node
            logit = _gathered_level(xs, w_in_ref, b_ref, row, chunks)
            visited.append((row, gelu(logit).astype(w_out_ref.dtype).astype(jnp.float32)))
            node = next_node(node, logit)
    for chunk in chunks:
        acc = jnp.zeros((block_tokens, block_hidden), jnp.float32)  # [TB, HC]
        for row, activation in visited:
            acc = acc + activation[:, None] * w_out_ref[row, chunk].astype(jnp.float32)  # [TB, HC] gather
        # Both indices as arrays: a row scatter that the interpreter can discharge too.
        column = chunk.start + lax.broadcasted_iota(jnp.int32, (1, block_hidden), 1)  # [1, HC]
        plgpu.store(y_ref.at[token[:, None], column], acc.astype(y_ref.dtype))


def _per_token(x, w_in, b_in, w_out, *, nodes, depth, tiling: Tiling, interpret):
    """The per-token kernel: x [T, Hp]; w_in, w_out [K*N, Hp]; b_in [K*N] float32 -> y [T, Hp]."""
    tokens = x.shape[0]
    padded_tokens = round_up(tokens, tiling.tokens)
    kernel = functools.partial(_per_token_kernel, tokens=tokens, nodes=nodes, depth=depth,
                               block_tokens=tiling.tokens, block_hidden=tiling.hidden)  # fmt: skip
    y = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((padded_tokens, x.shape[1]), x.dtype),
        grid=(padded_tokens // tiling.tokens,),
        compiler_params=plgpu.CompilerParams(num_warps=tiling.warps, num_stages=tiling.stages),
        interpret=interpret,
        name="fff_pallas",
    )(x, w_in, b_in, w_out)
    return y[:tokens]  # [Tp, Hp] -> [T, Hp]; no copy when TB divides T


def uses_routed(trees: int, depth: int, tokens: int, dtype, sizes: BlockSizes) -> bool:
    """Whether a call of this shape and dtype runs the routed kernel."""
    return (
        sizes.routed_min_tokens is not None
        and tokens >= sizes.routed_min_tokens
        and (jnp.dtype(dtype) == jnp.bfloat16 or sizes.routed_float32)
        and fff_pallas_routed.applies(trees, depth, sizes.sub_levels)
    )


def _padded_operands(x, w_in, b_in, w_out, tilings: list[Tiling]):
    """x [T, Hp]; w_in, w_out [K*N, Hp]; b_in [K*N] float32, with Hp a multiple of every tiling's chunk."""
    trees, nodes, hidden = w_in.shape
    padded_hidden = round_up(hidden, max(tiling.hidden for tiling in tilings))  # powers of 2: all divide it
    return (
        pad_hidden(x, padded_hidden),  # [T, Hp]
        pad_hidden(w_in, padded_hidden).reshape(trees * nodes, padded_hidden),  # [K, N, Hp] -> [K*N, Hp]
        b_in.astype(jnp.float32).reshape(trees * nodes),  # [K, N] -> [K*N]
        pad_hidden(w_out, padded_hidden).reshape(trees * nodes, padded_hidden),  # [K, N, Hp] -> [K*N, Hp]
    )


def _forward(x, w_in, b_in, w_out, sizes: BlockSizes, interpret: bool) -> jax.Array:
    """The kernels' forward: x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [T, H]."""
    trees, nodes, depth = fff_math.check_shapes(x, w_in, b_in, w_out)
    tokens, hidden = x.shape
    if tokens == 0:
        return jnp.zeros_like(x)
    routed = uses_routed(trees, depth, tokens, x.dtype, sizes)
    tilings = [sizes.route, sizes.tile] if routed else [sizes.per_token]
    tilings = [tiling.capped(tokens, hidden) for tiling in tilings]
    operands = _padded_operands(x, w_in, b_in, w_out, tilings)
    if routed:
        route, tile = tilings
        y = fff_pallas_routed.forward(
            *operands, sub_levels=sizes.sub_levels, route=route, tile=tile, interpret=interpret
        )
    else:
        (per_token,) = tilings
        y = _per_token(*operands, nodes=nodes, depth=depth, tiling=per_token, interpret=interpret)
    return y[:, :hidden]  # [T, Hp] -> [T, H]


def _check_2d(x, w_in, b_in, w_out, interpret: bool | None) -> bool:
    """Validates the kernels' operands; returns whether to interpret (default: off a GPU)."""
    fff_math.check_shapes(x, w_in, b_in, w_out)
    if x.ndim != 2:
        raise ValueError(f"x must be [T, H]; got shape {tuple(x.shape)} (fff.apply flattens leading axes)")
    return jax.default_backend() != "gpu" if interpret is None else interpret


@functools.partial(jax.jit, static_argnames=("sizes", "interpret"))
def fff_pallas(x, w_in, b_in, w_out, *, sizes: BlockSizes = BlockSizes(), interpret: bool | None = None):
    """The FFF layer by the Pallas kernels: x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [T, H].

    interpret: run the kernels in Pallas' interpreter (None: exactly when the default backend is not a GPU).
    A forward only (``ufbert_jax.fff`` makes it differentiable).
    """
    return _forward(x, w_in, b_in, w_out, sizes, _check_2d(x, w_in, b_in, w_out, interpret))


fff_pallas_reference = fff_math.conditional


def _train_tilings(x, sizes: BlockSizes) -> tuple[Tiling, Tiling]:
    """The routing and tile tilings of a training call (the backward kernels take the tile tiling)."""
    return sizes.route.capped(*x.shape), sizes.tile.capped(*x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _routed_train(x, w_in, b_in, w_out, sizes, interpret):
    return _forward(x, w_in, b_in, w_out, sizes, interpret)


def _routed_train_forward(x, w_in, b_in, w_out, sizes, interpret):
    route, tile = _train_tilings(x, sizes)
    operands = _padded_operands(x, w_in, b_in, w_out, [route, tile])
    y, routing = fff_pallas_routed.forward(
        *operands, sub_levels=sizes.sub_levels, route=route, tile=tile, interpret=interpret, save_logits=True
    )
    return y[:, : x.shape[1]], (operands, routing, b_in)


def _routed_train_backward(sizes, interpret, residuals, g):
    (x, w_in, _, w_out), routing, b_in = residuals
    _, tile = _train_tilings(x, sizes)
    hidden = g.shape[1]
    dx, dw_in, db_in, dw_out = fff_pallas_backward.backward(
        x, w_in, w_out, routing, pad_hidden(g, x.shape[1]), sub_levels=sizes.sub_levels, tile=tile,
        interpret=interpret,
    )  # fmt: skip
    weights = (1, *dw_in.shape[:1], hidden)  # [N, Hp] -> [1, N, H]
    return (
        dx[:, :hidden],
        dw_in[:, :hidden].reshape(weights).astype(w_in.dtype),
        db_in.reshape(b_in.shape).astype(b_in.dtype),  # [N] -> [1, N]
        dw_out[:, :hidden].reshape(weights).astype(w_out.dtype),
    )


_routed_train.defvjp(_routed_train_forward, _routed_train_backward)


def fff_pallas_train(
    x, w_in, b_in, w_out, *, sizes: BlockSizes = BlockSizes(), interpret: bool | None = None
):
    """The FFF training form on GPU: x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [T, H].

    Where the routed kernel applies (``uses_routed``: one tree, enough tokens, bfloat16) the routed forward
    saving its routing and the path-only backward kernels of ``fff_pallas_backward``; elsewhere the masked
    form.
    Gradients equal ``fff_math.masked``'s (``fff_math.path_vjp`` is the reference of the kernels).
    """
    interpret = _check_2d(x, w_in, b_in, w_out, interpret)
    trees, _, depth = fff_math.check_shapes(x, w_in, b_in, w_out)
    if not uses_routed(trees, depth, x.shape[0], x.dtype, sizes):
        return fff_math.masked(x, w_in, b_in, w_out)
    return _routed_train(x, w_in, b_in, w_out, sizes, interpret)
