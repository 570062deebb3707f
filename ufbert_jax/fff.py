"""The FFF implementation switch: the one place that picks an implementation and runs it.

Shape legend (docs/architecture.md): T tokens, H hidden, K trees, N nodes per tree, D depth.

Implementations (named in ``ufbert_jax.fff_names.IMPLS``), all with the semantics and numerics of
``ufbert_jax.fff_math``:
  * "masked", "conditional", "sparse": the pure-JAX forms of ``fff_math`` (masked: the original training
    form; conditional: the gather walk; sparse: the gather walk with a path-only VJP);
  * "pallas": the Pallas GPU inference kernels (``ufbert_jax.kernels.fff_pallas``);
  * "cpu": the XLA CPU custom call (``ufbert_jax.kernels.fff_cpu``);
  * "auto": per platform, the fastest forward when no gradient is asked and the fastest exact training
    form under differentiation (``resolve_impl`` says which).

The kernels compute forwards only. Each is made differentiable here, by ``with_training_vjp``: the kernel
runs when nobody asks for a gradient, and under ``jax.grad`` a training form runs instead (its forward and
its VJP), so that gradients are always exact and never come from autodiff through gathers on a GPU (an
unsorted scatter-add of per-token rows into shared tree rows, which serialises there).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import jax

from ufbert_jax import fff_math
from ufbert_jax.fff_math import paths
from ufbert_jax.fff_names import check_impl
from ufbert_jax.kernels import fff_cpu, fff_pallas

Impl = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

__all__ = ["Impl", "apply", "paths", "resolve_impl", "with_training_vjp"]


def with_training_vjp(inference: Impl, training: Impl) -> Impl:
    """`inference` when no gradient is asked; under differentiation `training`'s forward and VJP.

    A custom VJP sees whether it is being differentiated: its primal function runs when nobody asks for a
    gradient, its forward rule (here: ``jax.vjp`` of `training`) under ``jax.grad``.
    """

    @jax.custom_vjp
    def differentiable(x, w_in, b_in, w_out):
        return inference(x, w_in, b_in, w_out)

    def forward(x, w_in, b_in, w_out):
        return jax.vjp(training, x, w_in, b_in, w_out)

    def backward(training_vjp, cotangent):
        return training_vjp(cotangent)

    differentiable.defvjp(forward, backward)
    return differentiable


def _cpu_forward() -> Impl:
    """The CPU custom call where it can be built here, else the pure-JAX conditional form, with a warning."""
    if fff_cpu.is_available():
        return fff_cpu.fff_cpu
    warnings.warn(
        f"FFF impl 'auto' falls back to 'conditional' on CPU: {fff_cpu.unavailable_reason()}",
        RuntimeWarning,
        stacklevel=5,
    )
    return fff_math.conditional


# On CPU the sparse form trains faster than the masked one from this depth on (forward + backward, float32,
# 2 threads, benchmarks/fff_train_layer.py: 0.89x at D=7, 6.8x at D=11 with H=768; 0.70x at D=5, H=128).
CPU_SPARSE_MIN_DEPTH = 8


def _cpu_training(x, w_in, b_in, w_out):
    """The sparse form for deep trees, the masked form for shallow ones (where its dense products win)."""
    deep = fff_math.depth_from_nodes(w_in.shape[1]) >= CPU_SPARSE_MIN_DEPTH
    return (fff_math.sparse if deep else fff_math.masked)(x, w_in, b_in, w_out)


def _training(platform: str) -> Impl:
    """The fastest exact training form per platform (benchmarks/fff_train_layer.py measures them).

    GPU: the Pallas training kernels where they apply (one tree, bfloat16, enough tokens), else the masked
    form. CPU: the sparse form for trees of depth >= CPU_SPARSE_MIN_DEPTH, else the masked form.
    Elsewhere (TPU): the masked form.
    """
    if platform == "gpu":
        return fff_pallas.fff_pallas_train
    if platform == "cpu":
        return _cpu_training
    return fff_math.masked


def _inference(platform: str) -> Impl:
    """The fastest forward per platform: the Pallas kernels on GPU, the custom call on CPU, else masked."""
    if platform == "gpu":
        return fff_pallas.fff_pallas
    if platform == "cpu":
        return _cpu_forward()
    return fff_math.masked


@functools.cache
def _resolve(impl: str, platform: str) -> Impl:
    if impl == "auto":
        return with_training_vjp(_inference(platform), _training(platform))
    if impl == "masked":
        return fff_math.masked
    if impl == "conditional":
        return fff_math.conditional
    if impl == "sparse":
        return fff_math.sparse
    if impl == "pallas":
        return with_training_vjp(fff_pallas.fff_pallas, fff_pallas.fff_pallas_train)
    if impl == "cpu":
        return with_training_vjp(fff_cpu.fff_cpu, fff_math.sparse)
    raise AssertionError(impl)


def resolve_impl(impl: str, platform: str | None = None) -> Impl:
    """Maps an implementation name to its function x [T, H] -> y [T, H]; the one place that chooses.

    "auto": without gradient the platform's fastest forward (GPU: Pallas kernels; CPU: the custom call, or
    the conditional form where it cannot be built; elsewhere: masked); under differentiation the fastest
    exact training form (GPU: the Pallas training kernels where they apply, else masked; CPU: sparse for
    deep trees, else masked; elsewhere: masked). "pallas" and "cpu" differentiate through the Pallas
    training kernels and the sparse form.
    """
    return _resolve(check_impl(impl), platform or jax.default_backend())


def apply(x: jax.Array, w_in: jax.Array, b_in: jax.Array, w_out: jax.Array, impl: str = "auto") -> jax.Array:
    """The FFF layer: x [..., H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [..., H] (no output bias)."""
    fff_math.check_shapes(x, w_in, b_in, w_out)
    forward = resolve_impl(impl)
    flat = x.reshape(-1, x.shape[-1])  # [..., H] -> [T, H]
    return forward(flat, w_in, b_in, w_out).reshape(x.shape)
