"""Conditional FFF inference as a Pallas (Triton) GPU kernel.

Shape legend: T tokens, H hidden (Hp once padded), K trees, N = 2^(D+1) - 1 nodes per tree (heap order),
D depth, TB tokens per program, HC hidden columns per chunk, P = 2^DL nodes of the dense top levels.

Each program takes TB tokens and walks every tree for them in two stages:
  * the top DL levels (P - 1 nodes, a tile of P rows) are shared by all tokens, so their logits are one
    dense [TB, Hp] x [Hp, P] tensor-core product and their output one dense [TB, P] x [P, Hp] product with
    the off-path activations zeroed; routing through them picks each token's logit out of the tile;
  * the remaining D + 1 - DL levels gather one row of w_in and w_out per token (a vectorised pointer
    gather) and do a dot product and an axpy in float32.
The per-token gathers are bounded by L2 traffic once paths diverge. Before the kernel, the tokens are
sorted by the node they reach at level ``sort_levels`` of tree 0 (an XLA pre-pass: a [T, H] x [H, 2^L]
product and an argsort), so the tokens of a program share their subtree and its rows hit in L1. The sort is
only a locality hint: the kernel routes every token itself, so a token whose pre-pass route differs by
rounding is still computed exactly.

Numerics follow ``ufbert_jax.fff`` (float32 logits plus float32 bias, decision and GELU on that logit, NaN
routes left, activation rounded to the weights' dtype before the output product, float32 accumulation,
output in x's dtype). ``lax.erf`` has no Triton lowering, so the GELU uses XLA's own float32 rational erf
approximation (within 4.2e-7 of erf). The dense tile products run on tensor cores with float32 accumulation
(bf16 operands; float32 operands in IEEE mode, no TF32).

Differentiation: ``fff_pallas`` is a ``jax.custom_vjp`` whose backward pass is the VJP of
``ufbert_jax.fff.conditional`` at the same inputs, so gradients equal the reference's.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ufbert_jax import fff

# XLA's float32 erf: x * P(x^2) / Q(x^2) on x clamped to +-erfinv(1 - 2^-24) (expand_float_ops.cc).
_ERF_CLAMP = 3.832506856900711
_ERF_P = (0.00022905065861350646, 0.0034082910107109506, 0.050955695062380861, 0.18520832239976145,
          1.128379143519084)  # fmt: skip
_ERF_Q = (-1.1791602954361697e-7, 0.000023547966471313185, 0.0010179625278914885, 0.014070470171167667,
          0.11098505178285362, 0.49746925110067538, 1.0)  # fmt: skip

# Triton's tensor-core dot needs every dimension >= 16.
_MIN_DOT = 16


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling and scheduling of the kernel; the defaults are the fastest measured for 1x11 on an H200.

    Measured at 16384 tokens bf16 (docs/gpu_kernel.md): per-token gathers (dense_levels=0) 191 us; dense top
    7 levels 246 us (TB=32) and 288 us (TB=64); the argsort pre-pass alone 81 us, so sorting is off.

    block_tokens: TB, tokens per program (a power of 2 >= 16).
    block_hidden: HC, hidden columns per chunk (a power of 2 >= 16); H is padded to a multiple of it.
    dense_levels: DL, top levels done as dense tile products (capped at D, used when 2^DL >= 16).
    sort_levels: group tokens by their node at this level of tree 0 before the kernel (0: keep order).
    sort_min_tokens: sort only when there are at least this many tokens (below it the pre-pass costs more).
    hold_x: keep the program's x rows in registers for all levels (else reload them from cache per use).
    num_warps, num_stages: Triton's.
    """

    block_tokens: int = 16
    block_hidden: int = 128
    dense_levels: int = 0
    sort_levels: int = 0
    sort_min_tokens: int = 4096
    hold_x: bool = True
    num_warps: int = 8
    num_stages: int = 1

    def __post_init__(self):
        for name in ("block_tokens", "block_hidden"):
            value = getattr(self, name)
            if value < _MIN_DOT or value & (value - 1):
                raise ValueError(f"{name}={value} must be a power of 2 >= {_MIN_DOT}")
        if self.dense_levels < 0 or self.sort_levels < 0:
            raise ValueError(
                f"dense_levels={self.dense_levels} and sort_levels={self.sort_levels} must be >= 0"
            )


def _erf(x: jax.Array) -> jax.Array:
    """float32 erf by XLA's rational approximation (Horner form), for Triton which has no erf."""
    x = jnp.clip(x, -_ERF_CLAMP, _ERF_CLAMP)
    x2 = x * x
    p = jnp.full_like(x, _ERF_P[0])
    for coefficient in _ERF_P[1:]:
        p = p * x2 + coefficient
    q = jnp.full_like(x, _ERF_Q[0])
    for coefficient in _ERF_Q[1:]:
        q = q * x2 + coefficient
    return x * p / q


def _gelu(z: jax.Array) -> jax.Array:
    """Exact (erf) GELU of a float32 logit."""
    return 0.5 * z * (1.0 + _erf(z * 0.7071067811865476))


def _dot(a: jax.Array, b: jax.Array, trans_b: bool = False) -> jax.Array:
    """Tile product, float32 accumulation; float32 operands in IEEE mode (Triton's default: TF32)."""
    return plgpu.dot(a, b, trans_b=trans_b, precision=lax.Precision.HIGHEST)


def _x_chunks(x_ref, token, chunks, hold):
    """Per chunk, a function giving the [TB, HC] x tile of the tokens: loaded once (hold) or at each call."""
    if hold:
        return [lambda tile=x_ref[token, chunk]: tile for chunk in chunks]
    return [lambda chunk=chunk: x_ref[token, chunk] for chunk in chunks]


def _next_node(node: jax.Array, logit: jax.Array) -> jax.Array:
    """Heap step: 2n+1 when logit <= 0 or NaN, 2n+2 when logit > 0 (as fff._children)."""
    return 2 * node + 1 + (logit > 0).astype(jnp.int32)


def _dense_top(xs, w_in_ref, b_ref, base, top_nodes, top_levels, chunks):
    """Routes TB tokens through the top levels of one tree with a dense logit tile.

    xs: per chunk, a function giving the [TB, HC] x tile in the input dtype. Rows base .. base + P - 1 of
    w_in are this tree's top P - 1 nodes plus the first node of the next level, whose activation is masked.
    Returns (the [TB, P] float32 activations, zero off the path, and the [TB] node reached below the tile).
    """
    logits = sum(
        _dot(x(), w_in_ref[pl.ds(base, top_nodes), chunk], trans_b=True)  # [TB, HC] x [P, HC]^T
        for x, chunk in zip(xs, chunks, strict=True)
    )  # [TB, P] float32
    logits = logits + b_ref[pl.ds(base, top_nodes)][None, :]
    column = lax.broadcasted_iota(jnp.int32, logits.shape, 1)  # [TB, P] node id of each column
    node = jnp.zeros((logits.shape[0],), jnp.int32)  # [TB], every token starts at the root
    on_path = column < 0  # [TB, P] all False
    for _ in range(top_levels):
        hit = column == node[:, None]  # [TB, P]
        on_path = on_path | hit
        node = _next_node(node, jnp.sum(jnp.where(hit, logits, 0.0), axis=1))
    return jnp.where(on_path, _gelu(logits), 0.0), node


def _gathered_level(xs, w_in_ref, b_ref, row, chunks):
    """One tree level by per-token row gathers: row [TB] int32 global row ids -> [TB] float32 logits.

    The chunks' products are summed elementwise first and reduced across columns once: a cross-thread
    reduction costs shared-memory round trips and barriers, so one per level instead of one per chunk.
    """
    products = sum(
        x().astype(jnp.float32) * w_in_ref[row, chunk].astype(jnp.float32)  # [TB, HC] gather
        for x, chunk in zip(xs, chunks, strict=True)
    )  # [TB, HC]
    return b_ref[row] + jnp.sum(products, axis=1)


def _fff_kernel(order_ref, x_ref, w_in_ref, b_ref, w_out_ref, y_ref, *, tokens, nodes, depth, top_levels,
                block_tokens, block_hidden, hold_x):  # fmt: skip
    """One program: TB tokens (ids from order_ref) through all K trees, writing their output rows.

    order_ref [Tp] int32 token ids, padded with the distinct ids T .. Tp - 1 of y's padding rows;
    x_ref [T, Hp]; y_ref [Tp, Hp];
    w_in_ref, w_out_ref [K * N, Hp]; b_ref [K * N] float32.
    """
    trees = w_in_ref.shape[0] // nodes
    start = pl.program_id(0) * block_tokens
    token = order_ref[pl.ds(start, block_tokens)]  # [TB] token ids
    source = jnp.minimum(token, tokens - 1)  # [TB], padding rows compute on a real token, stored apart
    chunks = [pl.ds(c, block_hidden) for c in range(0, x_ref.shape[1], block_hidden)]
    xs = _x_chunks(x_ref, source, chunks, hold_x)
    top_nodes = 2**top_levels
    tops = []  # per tree (base row, [TB, P] activations in the weights' dtype)
    gathered = []  # per gathered (tree, level): ([TB] row ids, [TB] float32 rounded activations)
    for tree in range(trees):
        base = tree * nodes
        node = jnp.zeros((block_tokens,), jnp.int32)  # [TB]
        if top_levels:
            activation, node = _dense_top(xs, w_in_ref, b_ref, base, top_nodes, top_levels, chunks)
            tops.append((base, activation.astype(w_out_ref.dtype)))
        for _ in range(top_levels, depth + 1):
            logit = _gathered_level(xs, w_in_ref, b_ref, base + node, chunks)
            activation = _gelu(logit).astype(w_out_ref.dtype).astype(jnp.float32)
            gathered.append((base + node, activation))
            node = _next_node(node, logit)
    for chunk in chunks:
        acc = jnp.zeros((block_tokens, block_hidden), jnp.float32)  # [TB, HC]
        for base, activation in tops:
            acc = acc + _dot(activation, w_out_ref[pl.ds(base, top_nodes), chunk])  # [TB, P] x [P, HC]
        for row, activation in gathered:
            acc = acc + activation[:, None] * w_out_ref[row, chunk].astype(jnp.float32)  # [TB, HC] gather
        # Both indices as arrays: a row scatter that the interpreter can discharge too.
        column = chunk.start + lax.broadcasted_iota(jnp.int32, (1, block_hidden), 1)  # [1, HC]
        plgpu.store(y_ref.at[token[:, None], column], acc.astype(y_ref.dtype))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _next_pow2(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def _top_levels(depth: int, sizes: BlockSizes) -> int:
    """DL: dense levels, at most D (so the tile's P rows stay inside the tree) and 0 if P < 16."""
    levels = min(sizes.dense_levels, depth)
    return levels if 2**levels >= _MIN_DOT else 0


def _pad_hidden(a: jax.Array, hidden: int) -> jax.Array:
    """Zero-pads the last axis to `hidden` columns (zeros add nothing to logits or outputs)."""
    pad = hidden - a.shape[-1]
    return a if pad == 0 else jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)])


def _token_order(x, w_in, b_in, depth: int, block_tokens: int, sizes: BlockSizes) -> jax.Array:
    """[Tp] int32 token ids in processing order, padded to a multiple of TB with the ids T .. Tp - 1.

    With enough tokens, sorted by the node reached at level L = min(sort_levels, D) of tree 0 (a locality
    hint only, see the module docstring); else the identity.
    """
    tokens = x.shape[0]
    levels = min(sizes.sort_levels, depth)
    if levels and tokens >= sizes.sort_min_tokens:
        top = 2**levels - 1
        logits = jnp.dot(x, w_in[0, :top].T, preferred_element_type=jnp.float32) + b_in[0, :top]  # [T, 2^L-1]
        node = jnp.zeros((tokens,), jnp.int32)  # [T]
        for _ in range(levels):
            node = _next_node(node, jnp.take_along_axis(logits, node[:, None], axis=1)[:, 0])
        order = jnp.argsort(node, stable=True).astype(jnp.int32)  # [T]
    else:
        order = jnp.arange(tokens, dtype=jnp.int32)
    padding = jnp.arange(tokens, _round_up(tokens, block_tokens), dtype=jnp.int32)
    return jnp.concatenate([order, padding])  # [Tp]


def _forward(x, w_in, b_in, w_out, sizes: BlockSizes, interpret: bool) -> jax.Array:
    """The kernel's forward: x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [T, H]."""
    trees, nodes, depth = fff.check_shapes(x, w_in, b_in, w_out)
    tokens, hidden = x.shape
    if tokens == 0:
        return jnp.zeros_like(x)
    block_hidden = min(sizes.block_hidden, _next_pow2(max(hidden, _MIN_DOT)))
    padded_hidden = _round_up(hidden, block_hidden)
    block_tokens = min(sizes.block_tokens, _next_pow2(max(tokens, _MIN_DOT)))
    order = _token_order(x, w_in, b_in, depth, block_tokens, sizes)  # [Tp]
    kernel = functools.partial(
        _fff_kernel,
        tokens=tokens,
        nodes=nodes,
        depth=depth,
        top_levels=_top_levels(depth, sizes),
        block_tokens=block_tokens,
        block_hidden=block_hidden,
        hold_x=sizes.hold_x,
    )
    y = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((order.shape[0], padded_hidden), x.dtype),
        grid=(order.shape[0] // block_tokens,),
        compiler_params=plgpu.CompilerParams(num_warps=sizes.num_warps, num_stages=sizes.num_stages),
        interpret=interpret,
        name="fff_pallas",
    )(
        order,
        _pad_hidden(x, padded_hidden),  # [T, Hp]
        _pad_hidden(w_in, padded_hidden).reshape(trees * nodes, padded_hidden),  # [K, N, Hp] -> [K*N, Hp]
        b_in.astype(jnp.float32).reshape(trees * nodes),  # [K, N] -> [K*N]
        _pad_hidden(w_out, padded_hidden).reshape(trees * nodes, padded_hidden),  # [K, N, Hp] -> [K*N, Hp]
    )
    return y[:tokens, :hidden]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fff(x, w_in, b_in, w_out, sizes, interpret):
    return _forward(x, w_in, b_in, w_out, sizes, interpret)


def _fff_fwd(x, w_in, b_in, w_out, sizes, interpret):
    return _forward(x, w_in, b_in, w_out, sizes, interpret), (x, w_in, b_in, w_out)


def _fff_bwd(sizes, interpret, residuals, cotangent):
    """The VJP of the reference (gathers in XLA); the kernel has no backward of its own."""
    del sizes, interpret
    _, vjp = jax.vjp(fff.conditional, *residuals)
    return vjp(cotangent)


_fff.defvjp(_fff_fwd, _fff_bwd)


@functools.partial(jax.jit, static_argnames=("sizes", "interpret"))
def fff_pallas(x, w_in, b_in, w_out, *, sizes: BlockSizes = BlockSizes(), interpret: bool | None = None):
    """The FFF layer by the Pallas kernel: x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [T, H].

    interpret: run the kernel in Pallas' interpreter (None: exactly when the default backend is not a GPU).
    Gradients are those of ``fff.conditional`` (custom VJP).
    """
    fff.check_shapes(x, w_in, b_in, w_out)
    if x.ndim != 2:
        raise ValueError(f"x must be [T, H]; got shape {tuple(x.shape)} (fff.apply flattens leading axes)")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    return _fff(x, w_in, b_in, w_out, sizes, interpret)


fff_pallas_reference = fff.conditional
