"""Fast feedforward (FFF) layers, UltraFastBERT variant, as pure functions.

Shape legend: T tokens, H hidden, K trees, N = 2^(D+1) - 1 nodes per tree (heap order), D depth,
L = D + 1 nodes visited per tree.

Each tree node is a neuron: logit z = x . w_in[k, n] + b_in[k, n], activation GELU(z) (exact erf GELU),
contribution GELU(z) * w_out[k, n]. A token walks each tree from the root; at node n it goes to 2n+1 when
z <= 0 and to 2n+2 when z > 0 (strict), so it visits L = D+1 nodes per tree, and every visited node
contributes, the left turns included. The routing decision gets no gradient.

Two pure-JAX forms with identical semantics:
  * ``masked``: the original training form (Belcak & Wattenhofer's "masking implementation"): all K*N
    logits densely, a 0/1 map of the visited nodes without gradient, one dense output product. Same cost as a
    dense FF of width K*N, but cheap to differentiate on accelerators.
  * ``conditional``: per token and level, gather the node's row, one dot product and one axpy: O(K*L*H).
    This is the reference that the Pallas and CPU kernels reproduce.

Numerics (shared by every implementation, kernels included): logits accumulate in float32 and the bias is
added in float32; the routing decision and the GELU use that float32 logit; the activation is rounded to the
weights' dtype before the output product, which accumulates in float32; the result has x's dtype.

``apply`` validates shapes, flattens leading axes to T and dispatches to the implementation chosen by
``resolve_impl``: the only place in the project that knows which implementations exist.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp

Impl = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

IMPLS = ("auto", "masked", "conditional", "pallas", "cpu")


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


def _children(node: jax.Array, logit: jax.Array) -> jax.Array:
    """Heap-order step: left child 2n+1 when logit <= 0 (NaN included), right child 2n+2 when logit > 0."""
    return 2 * node + 1 + (logit > 0).astype(node.dtype)


def paths_from_logits(logits: jax.Array, depth: int) -> jax.Array:
    """Visited node ids from dense logits.

    Args:
      logits: [T, K, N] float32 logits of every node.
      depth: D.
    Returns:
      [T, K, L] int32 node ids, root first.
    """
    node = jnp.zeros(logits.shape[:-1], jnp.int32)  # [T, K]
    visited = []
    for _ in range(depth + 1):
        visited.append(node)
        logit = jnp.take_along_axis(logits, node[..., None], axis=-1)[..., 0]  # [T, K]
        node = _children(node, logit)
    return jnp.stack(visited, axis=-1)


def _dense_logits(x, w_in, b_in) -> jax.Array:
    """[T, H] x [K, N, H] -> [T, K, N] float32 logits."""
    logits = jnp.einsum("th,knh->tkn", x, w_in, preferred_element_type=jnp.float32)
    return logits + b_in.astype(jnp.float32)


def masked(x, w_in, b_in, w_out) -> jax.Array:
    """The original training form: dense logits, stop-gradient path map, dense output product.

    x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> [T, H].
    """
    _, nodes, _ = w_in.shape
    logits = _dense_logits(x, w_in, b_in)  # [T, K, N]
    path = paths_from_logits(jax.lax.stop_gradient(logits), depth_from_nodes(nodes))  # [T, K, L]
    on_path = jax.nn.one_hot(path, nodes, dtype=jnp.float32).sum(axis=-2)  # [T, K, N]
    activations = (gelu(logits) * jax.lax.stop_gradient(on_path)).astype(w_out.dtype)
    y = jnp.einsum("tkn,knh->th", activations, w_out, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def _walk(x, w_in, b_in):
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
        node = _children(node, logit)


def conditional(x, w_in, b_in, w_out) -> jax.Array:
    """Conditional matrix multiplication in pure JAX: O(K * L * H) per token.

    The reference every kernel reproduces. x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> [T, H].

    The rows are gathered from float32 copies of the weights: the products are the same (a bfloat16 value
    is exact in float32 and the sums accumulate in float32 anyway), but the gradient of a gather is a
    scatter-add over tokens, which must accumulate in float32 too, not in bfloat16.
    """
    out_dtype = w_out.dtype
    w_in, w_out = w_in.astype(jnp.float32), w_out.astype(jnp.float32)
    y = jnp.zeros((x.shape[0], x.shape[1]), jnp.float32)
    for tree, node, logit in _walk(x, w_in, b_in):
        activation = gelu(logit).astype(out_dtype).astype(jnp.float32)  # [T, K], rounded as the weights
        rows_out = w_out[tree, node]  # [T, K, H] gather
        y = y + jnp.einsum("tk,tkh->th", activation, rows_out, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def paths(x: jax.Array, w_in: jax.Array, b_in: jax.Array) -> jax.Array:
    """The node ids each token visits: x [..., H] -> [..., K, D+1] int32, root first."""
    check_shapes(x, w_in, b_in, w_in)
    flat = x.reshape(-1, x.shape[-1])  # [..., H] -> [T, H]
    visited = jnp.stack([node for _, node, _ in _walk(flat, w_in, b_in)], axis=-1)  # [T, K, L]
    return visited.reshape(*x.shape[:-1], *visited.shape[1:])


def _pallas_impl() -> Impl:
    from ufbert_jax.kernels import fff_pallas

    return fff_pallas.fff_pallas


def _cpu_impl() -> Impl:
    from ufbert_jax.kernels import fff_cpu

    return fff_cpu.fff_cpu


def _cpu_or_conditional() -> Impl:
    """The CPU custom call where it can be built here, else the pure-JAX conditional form, with a warning."""
    from ufbert_jax.kernels import fff_cpu

    if fff_cpu.is_available():
        return fff_cpu.fff_cpu
    warnings.warn(
        f"FFF impl 'auto' falls back to 'conditional' on CPU: {fff_cpu.unavailable_reason()}",
        RuntimeWarning,
        stacklevel=4,
    )
    return conditional


def _fastest_inference(platform: str) -> Impl:
    """The fastest forward for inference on a platform (no gradient needed)."""
    if platform == "gpu":
        return _pallas_impl()
    if platform == "cpu":
        return _cpu_or_conditional()
    return masked


@functools.cache
def _auto(platform: str) -> Impl:
    """Inference takes the platform's fastest forward; differentiation takes the masked training form.

    A custom VJP sees whether it is being differentiated: the primal function runs when nobody asks for
    a gradient, and the forward rule (masked form, with its own VJP) runs under jax.grad. So "auto" never
    differentiates through gathers, which serialise on GPUs (see docs/PLATFORM_NOTES in the brief).
    """
    inference = _fastest_inference(platform)

    @jax.custom_vjp
    def auto(x, w_in, b_in, w_out):
        return inference(x, w_in, b_in, w_out)

    def forward(x, w_in, b_in, w_out):
        return jax.vjp(masked, x, w_in, b_in, w_out)

    def backward(masked_vjp, cotangent):
        return masked_vjp(cotangent)

    auto.defvjp(forward, backward)
    return auto


def resolve_impl(impl: str, platform: str | None = None) -> Impl:
    """Maps an implementation name to its function [T, H] -> [T, H]; the one place that chooses.

    "auto": on GPU the Pallas kernel, on CPU the XLA custom call (or the conditional form where it cannot
    be built), elsewhere (TPU) the masked form; under differentiation always the masked form.
    """
    platform = platform or jax.default_backend()
    if impl == "auto":
        return _auto(platform)
    if impl == "masked":
        return masked
    if impl == "conditional":
        return conditional
    if impl == "pallas":
        return _pallas_impl()
    if impl == "cpu":
        return _cpu_impl()
    raise ValueError(f"unknown FFF impl {impl!r}; expected one of {IMPLS}")


def apply(x: jax.Array, w_in: jax.Array, b_in: jax.Array, w_out: jax.Array, impl: str = "auto") -> jax.Array:
    """The FFF layer: x [..., H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [..., H] (no output bias)."""
    check_shapes(x, w_in, b_in, w_out)
    forward = resolve_impl(impl)
    flat = x.reshape(-1, x.shape[-1])  # [..., H] -> [T, H]
    return forward(flat, w_in, b_in, w_out).reshape(x.shape)
