"""The FFF implementation switch: the one place that picks an implementation and runs it.

Shape legend (docs/architecture.md): T tokens, H hidden, K trees, N nodes per tree, D depth.

Implementations (named in ``ufbert_jax.fff_names.IMPLS``), all with the semantics and numerics of
``ufbert_jax.fff_math``:
  * "masked", "conditional", "sparse": the pure-JAX forms of ``fff_math`` (masked: the original training
    form; conditional: the gather walk; sparse: the gather walk with a path-only VJP);
  * "pallas": the Pallas GPU inference kernels (``ufbert_jax.kernels.fff_pallas``), compiled for a GPU;
    on CPU they run in Pallas' interpreter (for tests); refused elsewhere (``RUNS_ON``);
  * "cpu": the XLA CPU custom call (``ufbert_jax.kernels.fff_cpu``), on CPU only;
  * "auto": per platform, the fastest forward when no gradient is asked and the fastest exact training
    form under differentiation (``resolve_impl`` says which).

The platform is the default backend's, or the one named by ``target_platform`` while exporting for another
platform (``jax.export`` for a TPU traces on this host, where ``jax.default_backend()`` is still "cpu").

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

__all__ = [
    "PLATFORMS",
    "RUNS_ON",
    "Impl",
    "apply",
    "cpu_forms",
    "paths",
    "resolve_impl",
    "resolve_platform",
    "target_platform",
    "with_training_vjp",
]

#: The platforms an implementation is resolved for, as ``jax.default_backend()`` names them.
PLATFORMS = ("cpu", "gpu", "tpu")
#: ``jax.export``'s names for GPU platforms.
_EXPORT_NAMES = {"cuda": "gpu", "rocm": "gpu"}
#: Where the forms that are not pure JAX can run; every other form runs everywhere. The Pallas kernels are
#: Triton kernels (compiled for a GPU, interpreted on CPU); the custom call is registered for CPU only.
RUNS_ON = {"pallas": ("gpu", "cpu"), "cpu": ("cpu",)}

# The platform named by `target_platform`, None outside it. A JAX user context: part of jit's cache key, so
# a function traced for one platform is traced again for another instead of reusing the first trace.
_TARGET = jax.make_user_context(None)


def target_platform(platform: str):
    """A context in which implementations resolve for `platform` instead of the default backend.

    For exporting to a platform this host is not: ``jax.export`` traces here, where
    ``jax.default_backend()`` still names this host's platform.

        with fff.target_platform("tpu"):
            exported = jax.export.export(jax.jit(forward), platforms=["tpu"])(*args)

    `platform`: one of PLATFORMS, or an export name ("cuda", "rocm": "gpu"). Read by ``resolve_platform``,
    so by ``resolve_impl`` and ``ufbert_jax.model.resolve_attention_impl``.
    """
    name = _EXPORT_NAMES.get(platform, platform)
    if name not in PLATFORMS:
        raise ValueError(
            f"unknown target platform {platform!r}; expected one of {PLATFORMS + tuple(_EXPORT_NAMES)}"
        )
    return _TARGET(name)


def resolve_platform(platform: str | None = None) -> str:
    """The platform to resolve for: `platform`, else ``target_platform``'s, else the default backend's."""
    return platform or _TARGET.value or jax.default_backend()


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


def _cpu_kernel() -> Impl:
    """The CPU custom call where it can be built here, else the pure-JAX conditional form, with a warning."""
    if fff_cpu.is_available():
        return fff_cpu.fff_cpu
    warnings.warn(
        f"FFF impl 'auto' falls back to 'conditional' on CPU: {fff_cpu.unavailable_reason()}",
        RuntimeWarning,
        stacklevel=6,
    )
    return fff_math.conditional


# CPU rules, measured with benchmarks/speed_map.py at 16384 tokens (float32, 2 threads, AMD EPYC Zen 4;
# docs/speed_map.md), on the paper's rows (K trees x depth D, K N about 4096). Both forms' costs grow linearly
# with K (the custom call walks and writes y tree by tree; the masked form is one dense product of width
# K N), so the crossover is a depth. Inference: the custom call from this depth on (ms, masked vs custom
# call: 3072x0 1077 vs 15599, 512x2 1440 vs 3061, 256x3 1640 vs 1639, 128x4 1793 vs 882).
CPU_KERNEL_MIN_DEPTH = 3
# Training (forward + backward): the sparse form from this depth on (ms, masked vs sparse: 16x7 4720 vs
# 3975, 8x8 4691 vs 2414, 1x11 5008 vs 628). At 16384 tokens its [T, K, H] gathers of K >= 32 trees (depth
# <= 6 in the paper's rows) exceed 1 GiB a level, and speed_map.py does not time them there.
CPU_SPARSE_MIN_DEPTH = 7


def cpu_forms(trees: int, depth: int) -> tuple[str, str]:
    """(inference form, training form) that "auto" runs on CPU for K = `trees` trees of depth D = `depth`.

    Inference: the custom call ("cpu") for D >= CPU_KERNEL_MIN_DEPTH, else "masked". Training: "sparse" for
    D >= CPU_SPARSE_MIN_DEPTH, else "masked". The measured crossovers do not depend on K (see above).
    """
    if trees < 1 or depth < 0:
        raise ValueError(f"need trees >= 1 and depth >= 0; got {trees=}, {depth=}")
    inference = "cpu" if depth >= CPU_KERNEL_MIN_DEPTH else "masked"
    return inference, ("sparse" if depth >= CPU_SPARSE_MIN_DEPTH else "masked")


def _shape_forms(w_in: jax.Array) -> tuple[str, str]:
    """cpu_forms for the trees of w_in [K, N, H] (shapes are static: chosen once per trace)."""
    trees, nodes, _ = w_in.shape
    return cpu_forms(trees, fff_math.depth_from_nodes(nodes))


def _cpu_inference(x, w_in, b_in, w_out):
    """The forward cpu_forms names for these trees: the custom call (or its fallback) or the masked form.

    The custom call is looked up only for trees that run it, so a model of shallow trees never builds it
    and never warns that it cannot.
    """
    form = _cpu_kernel() if _shape_forms(w_in)[0] == "cpu" else fff_math.masked
    return form(x, w_in, b_in, w_out)


def _cpu_training(x, w_in, b_in, w_out):
    """The training form cpu_forms names for these trees: sparse or masked."""
    form = fff_math.sparse if _shape_forms(w_in)[1] == "sparse" else fff_math.masked
    return form(x, w_in, b_in, w_out)


def _pallas(platform: str) -> tuple[Impl, Impl]:
    """The Pallas kernels (forward, training form): compiled for a GPU, in Pallas' interpreter on CPU.

    Chosen by the resolved platform, not the default backend, so that an export for a GPU from any host
    (``target_platform("gpu")``) lowers the compiled kernels.
    """
    interpret = platform != "gpu"
    return (
        functools.partial(fff_pallas.fff_pallas, interpret=interpret),
        functools.partial(fff_pallas.fff_pallas_train, interpret=interpret),
    )


# TPU (docs/tpu.md): the masked form, for training and inference alike. No TPU was reachable here, so
# the rule rests on what the exported TPU programs contain (tests/test_tpu_export.py,
# test_hlo_behind_the_tpu_rule) and on the cost model, not on a timing. Per token of a 1x11 layer
# (H = 768): the masked forward is two dense products [T, H] x [H, K N] of 12.58 MFLOP in all (4 K N H),
# its training step (forward and VJP) six of 37.74 MFLOP, with no row gather and no scatter: the shape a
# TPU's matrix unit is built for. The gather forms (conditional, sparse) do 341x fewer FLOPs
# (4 K (D+1) H = 36.9 KFLOP), but as 2 K (D+1) = 24 row gathers of H values in D+1 = 12 dependent steps
# and 24 per-token dot products (batched dot_generals of one row per token: vector-unit work, nothing for
# the matrix unit); the sparse backward adds 24 row gathers and 36 scatter-adds. They win only if one
# gathered row (the gather and its dot) costs less than 2 N H / (D+1) FLOPs of the matrix unit at its
# peak: 2.7 ns on a TPU v5e (197 TFLOP/s), 0.6 ns on a v6e (918; both from train/metrics.py), that is
# about 0.6 and 2.7 TB/s of bf16 row-gather bandwidth. How fast a TPU gathers rows was not measured; the
# masked form's cost is the known one of a dense feedforward of width K N.


def _training(platform: str) -> Impl:
    """The fastest exact training form per platform (benchmarks/fff_train_layer.py measures them).

    GPU: the Pallas training kernels where they apply (one tree, bfloat16, enough tokens), else the masked
    form. CPU: ``cpu_forms``' training form (sparse for deep trees, else masked). TPU and
    elsewhere: the masked form (dense products, no gathers or scatters; see the TPU note above).
    """
    if platform == "gpu":
        return _pallas(platform)[1]
    if platform == "cpu":
        return _cpu_training
    return fff_math.masked


def _inference(platform: str) -> Impl:
    """The fastest forward per platform: the Pallas kernels on GPU, on CPU ``cpu_forms``' choice, else masked.

    TPU: the masked form (see the TPU note above).
    """
    if platform == "gpu":
        return _pallas(platform)[0]
    if platform == "cpu":
        return _cpu_inference
    return fff_math.masked


@functools.cache
def _resolve(impl: str, platform: str) -> Impl:
    if impl == "auto":
        inference, training = _inference(platform), _training(platform)
        return inference if inference is training else with_training_vjp(inference, training)
    if impl == "masked":
        return fff_math.masked
    if impl == "conditional":
        return fff_math.conditional
    if impl == "sparse":
        return fff_math.sparse
    if impl == "pallas":
        return with_training_vjp(*_pallas(platform))
    if impl == "cpu":
        return with_training_vjp(fff_cpu.fff_cpu, fff_math.sparse)
    raise AssertionError(impl)


def resolve_impl(impl: str, platform: str | None = None) -> Impl:
    """Maps an implementation name to its function x [T, H] -> y [T, H]; the one place that chooses.

    `platform`: one of PLATFORMS, default ``resolve_platform()`` (the target platform of an export, else the
    default backend). "auto": without gradient the platform's fastest forward (GPU: Pallas kernels; CPU:
    ``cpu_forms``: the custom call for trees of depth >= 3, or the conditional form where it cannot be
    built, else masked; TPU and elsewhere: masked); under differentiation the fastest exact training form
    (GPU: the Pallas training kernels where they apply, else masked; CPU: sparse for depth >= 7, else
    masked; TPU and elsewhere: masked). "pallas" and "cpu" differentiate through the Pallas training
    kernels and the sparse form. A form asked for on a platform where it cannot run (``RUNS_ON``: "pallas"
    on a TPU, "cpu" off a CPU) raises ValueError.
    """
    impl, platform = check_impl(impl), resolve_platform(platform)
    runs_on = RUNS_ON.get(impl, (platform,))
    if platform not in runs_on:
        raise ValueError(
            f"FFF impl {impl!r} cannot run on platform {platform!r}: it runs on {' and '.join(runs_on)} "
            "only. Use 'auto', or a pure-JAX form that runs anywhere: 'masked', 'conditional', 'sparse'."
        )
    return _resolve(impl, platform)


def apply(x: jax.Array, w_in: jax.Array, b_in: jax.Array, w_out: jax.Array, impl: str = "auto") -> jax.Array:
    """The FFF layer: x [..., H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [..., H] (no output bias)."""
    fff_math.check_shapes(x, w_in, b_in, w_out)
    forward = resolve_impl(impl)
    flat = x.reshape(-1, x.shape[-1])  # [..., H] -> [T, H]
    return forward(flat, w_in, b_in, w_out).reshape(x.shape)
