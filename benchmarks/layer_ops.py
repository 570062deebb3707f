"""What both FFF layer benchmarks time and draw (benchmarks/fff_layer_cpu.py, benchmarks/fff_layer_gpu.py).

UltraFastBERT-1x11 shapes: H = 768, one tree (K = 1) of depth D = 11, so N = 4095 nodes of which L = 12 are
visited per token, against XLA's dense feedforwards 768->3072->768 (crammedBERT-3072's) and 768->4095->768
(as wide as the tree). Every op takes its small float32 operand second, ``op(x, small, *rest) -> y [T, H]``,
the operand that benchmarks/timing.py chains from call to call. Weights are arguments, not closed-over
constants, so that XLA cannot constant-fold them into the compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

HIDDEN, TREES, DEPTH = 768, 1, 11  # UltraFastBERT-1x11
NODES = 2 ** (DEPTH + 1) - 1
BASELINE = "dense3072"  # the speedups are over this op
DENSE_WIDTHS = {"dense3072": 3072, "dense4095": 4095}


def dense_ff(x: jax.Array, b1: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
    """XLA's dense FF gelu(x w1 + b1) w2, exact GELU, float32 accumulation, W the width.

    x [T, H], b1 [W], w1 [H, W], w2 [W, H] -> [T, H] in x's dtype. b1 is zero (crammedBERT's FF has no
    biases): it is the small operand that the timed loop chains.
    """
    hidden = jnp.dot(x, w1, preferred_element_type=jnp.float32) + b1  # [T, W]
    activation = jax.nn.gelu(hidden, approximate=False).astype(x.dtype)
    return jnp.dot(activation, w2, preferred_element_type=jnp.float32).astype(x.dtype)


def fff_op(impl: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """An FFF implementation impl(x, w_in, b_in, w_out) as op(x, b_in, w_in, w_out): b_in [K, N] first."""
    return lambda x, b_in, w_in, w_out: impl(x, w_in, b_in, w_out)


def inputs(rng: np.random.Generator, tokens: int, dtype, rotate: int) -> list[jax.Array]:
    """`rotate` input sets x [T, H] of standard normal values."""
    return [jnp.asarray(rng.standard_normal((tokens, HIDDEN)), dtype) for _ in range(rotate)]


def fff_params(
    rng: np.random.Generator, dtype, trees: int = TREES, depth: int = DEPTH
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(b_in [K, N] float32, w_in [K, N, H], w_out [K, N, H]): logits of order 1 for x ~ N(0, 1).

    K = `trees`, N = 2^(`depth` + 1) - 1; UltraFastBERT-1x11 by default.
    """
    nodes = 2 ** (depth + 1) - 1
    b_in = jnp.asarray(0.1 * rng.standard_normal((trees, nodes)), jnp.float32)
    w_in = jnp.asarray(rng.standard_normal((trees, nodes, HIDDEN)) / np.sqrt(HIDDEN), dtype)
    w_out = jnp.asarray(0.02 * rng.standard_normal((trees, nodes, HIDDEN)), dtype)
    return b_in, w_in, w_out


def dense_params(rng: np.random.Generator, width: int, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(b1 [W] float32 zeros, w1 [H, W], w2 [W, H]) for dense_ff."""
    w1 = jnp.asarray(rng.standard_normal((HIDDEN, width)) / np.sqrt(HIDDEN), dtype)
    w2 = jnp.asarray(0.02 * rng.standard_normal((width, HIDDEN)), dtype)
    return jnp.zeros((width,), jnp.float32), w1, w2


@dataclasses.dataclass(frozen=True)
class Curve:
    """One line of the speedup plot: speedup over BASELINE at each token count."""

    label: str
    tokens: Sequence[int]
    speedup: Sequence[float]
    style: str = "o-"
    alpha: float = 1.0


def speedup_plot(curves: Sequence[Curve], target: float, title: str, path: str | Path) -> None:
    """Saves a log-log plot of speedup over the dense 768-3072-768 FF against tokens, with the target line."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for curve in curves:
        ax.plot(curve.tokens, curve.speedup, curve.style, label=curve.label, alpha=curve.alpha)
    ax.axhline(target, color="gray", lw=0.8, ls="-.", label=f"target {target:.0f}x")
    ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="speedup over XLA dense FF 768-3072-768")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
