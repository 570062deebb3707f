"""Fast feedforward (FFF) layers, UltraFastBERT variant: the math, as pure JAX functions.

Shape legend (docs/architecture.md): T tokens, H hidden, K trees, N = 2^(D+1) - 1 nodes per tree (heap
order), D depth, L = D + 1 nodes visited per tree.

Each tree node is a neuron: logit z = x . w_in[k, n] + b_in[k, n], activation GELU(z) (exact erf GELU),
contribution GELU(z) * w_out[k, n]. A token walks each tree from the root; at node n it goes to 2n+1 when
z <= 0 and to 2n+2 when z > 0 (strict), so it visits L = D+1 nodes per tree, and every visited node
contributes, the left turns included. The routing decision gets no gradient.

Three pure-JAX forms with identical semantics:
  * ``masked``: the original training form (Belcak & Wattenhofer's "masking implementation"): all K*N
    logits densely, a 0/1 map of the visited nodes without gradient, one dense output product. Same cost as a
    dense FF of width K*N. The reference for gradients. Off-path nodes are selected away, so a non-finite
    weight reaches only the tokens whose path visits its node, as in the other forms.
  * ``conditional``: per token and level, gather the node's row, one dot product and one axpy: O(K*L*H).
    The reference that the inference kernels reproduce.
  * ``sparse``: ``conditional``'s forward with a hand-written VJP that touches only the L visited nodes per
    tree (``path_vjp``): O(K*L*H) per token forward and backward, the masked form's gradients.

Numerics (shared by every implementation, kernels included): logits accumulate in float32 and the bias is
added in float32; the routing decision and the GELU use that float32 logit; the activation is rounded to the
weights' dtype before the output product, which accumulates in float32; the result has x's dtype. In the
backward pass the activation's cotangent is rounded to the weights' dtype (as the masked form's is), and
weight-gradient rows accumulate in float32 before the one rounding to the weights' dtype.

This module is the ground floor: kernels (``ufbert_jax.kernels``) build on it, and ``ufbert_jax.fff``
chooses between the implementations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def depth_from_nodes(num_nodes: int) -> int:
    """Returns D such that num_nodes == 2^(D+1) - 1, or raises ValueError."""
    depth = (num_nodes + 1).bit_length() - 2
    if num_nodes < 1 or 2 ** (depth + 1) - 1 != num_nodes:
        raise ValueError(
            f"FFF trees need N = 2^(D+1) - 1 nodes per tree (1, 3, 7, 15, ...); got N={num_nodes}"
        )
    return depth


def check_shapes(x, w_in, b_in, w_out) -> tuple[int, int, int]:
    """Validates FFF operands and returns (K, N, D).

    x [..., H]; w_in, w_out [K, N, H]; b_in [K, N]. x, w_in and w_out share one floating dtype.
    """
    if w_in.ndim != 3:
        raise ValueError(f"w_in must be [K, N, H]; got shape {tuple(w_in.shape)}")
    trees, nodes, hidden = w_in.shape
    if tuple(w_out.shape) != tuple(w_in.shape):
        raise ValueError(
            f"w_out must have w_in's shape [K, N, H] = {tuple(w_in.shape)}; got {tuple(w_out.shape)}"
        )
    if tuple(b_in.shape) != (trees, nodes):
        raise ValueError(f"b_in must be [K, N] = {(trees, nodes)}; got {tuple(b_in.shape)}")
    if x.ndim < 1 or x.shape[-1] != hidden:
        raise ValueError(f"x must be [..., H] with H={hidden}; got shape {tuple(x.shape)}")
    if trees < 1:
        raise ValueError(f"need at least one tree; got K={trees}")
    for name, arr in (("x", x), ("w_in", w_in), ("b_in", b_in), ("w_out", w_out)):
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(f"{name} must be floating point; got dtype {arr.dtype}")
    if not (x.dtype == w_in.dtype == w_out.dtype):
        raise TypeError(
            f"x, w_in and w_out must share one dtype; got {x.dtype}, {w_in.dtype}, {w_out.dtype} "
            "(cast the weights to the compute dtype first)"
        )
    return trees, nodes, depth_from_nodes(nodes)


def gelu(z: jax.Array) -> jax.Array:
    """The exact (erf) GELU, as in the original (torch.nn.GELU() default)."""
    return jax.nn.gelu(z, approximate=False)


def _tree_ids(tokens: int, trees: int) -> jax.Array:
    """[T, K] tree index of each (token, tree) pair, for gathers from [K, N, ...] weights."""
    return jnp.broadcast_to(jnp.arange(trees, dtype=jnp.int32), (tokens, trees))


def child(node: jax.Array, right: jax.Array) -> jax.Array:
    """Heap-order step: the right child 2n+2 where `right` (bool) holds, else the left child 2n+1."""
    return 2 * node + 1 + right.astype(node.dtype)


def next_node(node: jax.Array, logit: jax.Array) -> jax.Array:
    """The child a logit routes to: right (2n+2) when logit > 0, left (2n+1) when logit <= 0 or NaN."""
    return child(node, logit > 0)


def path_map(right: jax.Array) -> jax.Array:
    """The 0/1 map of the visited nodes from every node's decision (no gradient: the decisions are bools).

    right [T, K, N] bool: whether a token at node n goes to its right child -> [T, K, N] float32.
    """
    nodes = right.shape[-1]
    node = jnp.zeros(right.shape[:-1], jnp.int32)  # [T, K], every token starts at the root
    visited = []
    for _ in range(depth_from_nodes(nodes) + 1):
        visited.append(node)
        node = child(node, jnp.take_along_axis(right, node[..., None], axis=-1)[..., 0])  # [T, K]
    path = jnp.stack(visited, axis=-1)  # [T, K, L]
    return jax.nn.one_hot(path, nodes, dtype=jnp.float32).sum(axis=-2)


def dense_logits(x, w_in, b_in) -> jax.Array:
    """Every node's logit: x [T, H]; w_in [K, N, H]; b_in [K, N] -> [T, K, N] float32."""
    logits = jnp.einsum("th,knh->tkn", x, w_in, preferred_element_type=jnp.float32)
    return logits + b_in.astype(jnp.float32)


def weighted_output(logits: jax.Array, weights: jax.Array, w_out: jax.Array, dtype) -> jax.Array:
    """sum over trees and nodes of weights * GELU(logits) * w_out: [T, K, N] x2, [K, N, H] -> [T, H].

    The weighted activation is rounded to the weights' dtype before the product, which accumulates in
    float32; the result has `dtype`.
    """
    activations = (gelu(logits) * weights).astype(w_out.dtype)
    y = jnp.einsum("tkn,knh->th", activations, w_out, preferred_element_type=jnp.float32)
    return y.astype(dtype)


def masked(x, w_in, b_in, w_out) -> jax.Array:
    """The original training form: dense logits, a path map without gradient, dense output product.

    x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> [T, H].

    Off-path nodes are selected away (jnp.where), not multiplied by zero, so that a node off a token's path
    never changes that token's output, as in the gather forms: a NaN or infinite logit (from w_in or b_in)
    of an off-path node would give 0 * NaN = NaN. A non-finite w_out row cannot be kept out of the dense
    output product that way, so the product runs on w_out with its non-finite entries zeroed and a token
    whose path visits a node with a non-finite w_out entry gets a NaN output row (the gather forms give a
    non-finite value in that entry's column). For finite weights both selects pass everything through:
    outputs and gradients are those of the multiply-by-the-map form.
    """
    logits = dense_logits(x, w_in, b_in)  # [T, K, N]
    visited = path_map(logits > 0) > 0  # [T, K, N] bool
    activations = jnp.where(visited, gelu(logits), 0.0).astype(w_out.dtype)  # [T, K, N]
    finite = jnp.isfinite(w_out)  # [K, N, H]
    y = jnp.einsum(
        "tkn,knh->th", activations, jnp.where(finite, w_out, 0), preferred_element_type=jnp.float32
    )  # [T, H]
    reaches_non_finite = jnp.any(visited & ~jnp.all(finite, axis=-1), axis=(1, 2))  # [T]
    return jnp.where(reaches_non_finite[:, None], jnp.nan, y).astype(x.dtype)


def walk(x, w_in, b_in):
    """Walks every tree level by level with gathered rows.

    x [T, H]; w_in [K, N, H]; b_in [K, N]. Yields, for each of the L levels, (tree, node, logit), each
    [T, K]: the tree index, the node id visited at this level, and its float32 logit.
    """
    trees, nodes, _ = w_in.shape
    tree = _tree_ids(x.shape[0], trees)  # [T, K]
    node = jnp.zeros_like(tree)  # [T, K], every token starts at the root
    for _ in range(depth_from_nodes(nodes) + 1):
        rows_in = w_in[tree, node]  # [T, K, H] gather
        logit = jnp.einsum("th,tkh->tk", x, rows_in, preferred_element_type=jnp.float32)
        logit = logit + b_in[tree, node].astype(jnp.float32)  # [T, K]
        yield tree, node, logit
        node = next_node(node, logit)


def conditional(x, w_in, b_in, w_out) -> jax.Array:
    """Conditional matrix multiplication in pure JAX: O(K * L * H) per token.

    The reference every kernel reproduces. x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> [T, H].
    """
    return conditional_with_path(x, w_in, b_in, w_out)[0]


def paths(x: jax.Array, w_in: jax.Array, b_in: jax.Array) -> jax.Array:
    """The node ids each token visits: x [..., H] -> [..., K, D+1] int32, root first."""
    check_shapes(x, w_in, b_in, w_in)
    flat = x.reshape(-1, x.shape[-1])  # [..., H] -> [T, H]
    visited = jnp.stack([node for _, node, _ in walk(flat, w_in, b_in)], axis=-1)  # [T, K, L]
    return visited.reshape(*x.shape[:-1], *visited.shape[1:])


def conditional_with_path(x, w_in, b_in, w_out) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``conditional`` that also returns the path: (y [T, H], nodes [T, K, L] int32, logits [T, K, L] f32).

    The rows are gathered from float32 copies of the weights: the products are the same (a bfloat16 value
    is exact in float32 and the sums accumulate in float32 anyway), but the gradient of a gather is a
    scatter-add over tokens, which must accumulate in float32 too, not in bfloat16.
    """
    out_dtype = w_out.dtype
    w_in, w_out = w_in.astype(jnp.float32), w_out.astype(jnp.float32)
    y = jnp.zeros((x.shape[0], x.shape[1]), jnp.float32)
    nodes, logits = [], []
    for tree, node, logit in walk(x, w_in, b_in):
        activation = gelu(logit).astype(out_dtype).astype(jnp.float32)  # [T, K], rounded as the weights
        rows_out = w_out[tree, node]  # [T, K, H] gather
        y = y + jnp.einsum("tk,tkh->th", activation, rows_out, preferred_element_type=jnp.float32)
        nodes.append(node)
        logits.append(logit)
    return y.astype(x.dtype), jnp.stack(nodes, axis=-1), jnp.stack(logits, axis=-1)


def path_vjp(x, w_in, b_in, w_out, nodes, logits, g) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The FFF's VJP from its path: only the L visited nodes per tree and token get gradient.

    x [T, H]; w_in, w_out [K, N, H]; b_in [K, N]; nodes [T, K, L] int32 and logits [T, K, L] float32 from
    the forward walk; g [T, H] the output's cotangent. Returns (dx, dw_in, db_in, dw_out) in the operands'
    dtypes. Per visited node n of a token: g_a = g . w_out[n] (rounded to the weights' dtype),
    dz = g_a * GELU'(z), dx += dz * w_in[n], dw_in[n] += dz * x, db_in[n] += dz, dw_out[n] += GELU(z) * g;
    the weight-gradient rows are segment sums over tokens in float32.
    """
    trees, num_nodes, hidden = w_in.shape
    weight_dtype = w_out.dtype
    w_in32, w_out32 = w_in.astype(jnp.float32), w_out.astype(jnp.float32)
    x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
    tree = _tree_ids(x.shape[0], trees)  # [T, K]
    dx = jnp.zeros_like(x32)  # [T, H]
    dw_in = dw_out = jnp.zeros((trees * num_nodes, hidden), jnp.float32)  # [K*N, H]
    db_in = jnp.zeros((trees * num_nodes,), jnp.float32)  # [K*N]
    for level in range(nodes.shape[-1]):
        node, logit = nodes[..., level], logits[..., level]  # [T, K] each
        activation, gelu_vjp = jax.vjp(gelu, logit)
        activation = activation.astype(weight_dtype).astype(jnp.float32)  # [T, K] as in the forward
        g_activation = jnp.einsum("th,tkh->tk", g32, w_out32[tree, node])  # [T, K], [T, K, H] gather
        (dz,) = gelu_vjp(g_activation.astype(weight_dtype).astype(jnp.float32))  # [T, K]
        dx = dx + jnp.einsum("tk,tkh->th", dz, w_in32[tree, node])  # [T, K, H] gather
        row = (tree * num_nodes + node).reshape(-1)  # [T, K] -> [T*K] global row ids
        dz_x = (dz[:, :, None] * x32[:, None, :]).reshape(-1, hidden)  # [T, K, H] -> [T*K, H]
        a_g = (activation[:, :, None] * g32[:, None, :]).reshape(-1, hidden)  # [T, K, H] -> [T*K, H]
        dw_in = dw_in + jax.ops.segment_sum(dz_x, row, trees * num_nodes)
        dw_out = dw_out + jax.ops.segment_sum(a_g, row, trees * num_nodes)
        db_in = db_in + jax.ops.segment_sum(dz.reshape(-1), row, trees * num_nodes)
    shape = (trees, num_nodes, hidden)
    return (
        dx.astype(x.dtype),
        dw_in.reshape(shape).astype(w_in.dtype),  # [K*N, H] -> [K, N, H]
        db_in.reshape(trees, num_nodes).astype(b_in.dtype),  # [K*N] -> [K, N]
        dw_out.reshape(shape).astype(w_out.dtype),  # [K*N, H] -> [K, N, H]
    )


@jax.custom_vjp
def sparse(x, w_in, b_in, w_out) -> jax.Array:
    """Conditional forward, path-only backward: x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> [T, H].

    The forward saves the visited nodes and their logits instead of recomputing dense [T, K, N] logits;
    the backward is ``path_vjp``. Gradients equal the masked form's (the same sums, in another order).
    """
    return conditional(x, w_in, b_in, w_out)


def _sparse_forward(x, w_in, b_in, w_out):
    y, nodes, logits = conditional_with_path(x, w_in, b_in, w_out)
    return y, (x, w_in, b_in, w_out, nodes, logits)


def _sparse_backward(residuals, g):
    return path_vjp(*residuals, g)


sparse.defvjp(_sparse_forward, _sparse_backward)
