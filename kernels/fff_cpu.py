"""Conditional FFF inference on CPU: an XLA custom call (typed FFI, C++ in ``fff_cpu.cc``).

Shape legend: T tokens, H hidden, K trees, N = 2^(D+1) - 1 nodes per tree, D depth.

``fff_cpu(x, w_in, b_in, w_out)`` has the signature and the numerics of ``reference`` (=
``ufbert_jax.fff_math.conditional``): x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> y [T, H]; float32
or bfloat16 (b_in float32 or x's dtype). The kernel streams each weight row once per group of tokens that
visits it (docs/cpu_kernel.md). It is a forward only: ``ufbert_jax.fff`` makes it differentiable (the
sparse training form runs under ``jax.grad``).

The shared library is compiled at first use (never at import) with ``$CXX`` (default ``g++``) against the
FFI headers of the jaxlib that loads it (``jax.ffi.include_dir()``: newer headers would be refused by an
older jaxlib and take the CPU backend down), once per instruction set (``ISAS``): on x86-64 an AVX-512
build (x86-64-v4), an AVX2 + FMA build (x86-64-v3) and a portable one; elsewhere one ``-march=native``
build. ``isa()`` picks, at run time, the widest one this CPU has (its /proc/cpuinfo flags), or the one
named by ``UFBERT_JAX_FFF_CPU_ISA`` (tests force "avx2" on AVX-512 machines this way); each is its own FFI
target, ``TARGET + "_" + isa``, so several can serve one process. Libraries are cached in
``$UFBERT_JAX_CACHE`` (default ``~/.cache/ufbert_jax``) under a key that hashes the source, jaxlib version,
compiler, flags and CPU, and are written to a temporary file then renamed, so concurrent first uses in
several processes are safe.
``UFBERT_JAX_FFF_CPU_SANITIZE=address`` builds an AddressSanitizer variant (run Python with libasan and
libstdc++ preloaded; docs/cpu_kernel.md has the command).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from ufbert_jax import fff_math

reference = fff_math.conditional

TARGET = "ufbert_fff_cpu"
SOURCE = Path(__file__).with_name("fff_cpu.cc")
# -fopenmp-simd: `#pragma omp simd` loops; -fno-trapping-math: lets GCC vectorise the branch-free GELU.
FLAGS = ("-O3", "-fopenmp-simd", "-fno-trapping-math", "-std=c++17", "-shared", "-fPIC")
ISA_ENV = "UFBERT_JAX_FFF_CPU_ISA"
X86 = platform.machine().lower() in ("x86_64", "amd64")
# Per instruction set, widest first: the compiler flags and the /proc/cpuinfo flags the build needs. The
# AVX-512 build prefers 512-bit vectors in auto-vectorised loops too (the GELU), not only in intrinsics.
ISA_BUILDS = (
    {
        "avx512": (("-march=x86-64-v4", "-mtune=native", "-mprefer-vector-width=512"),
                   {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "bmi2"}),
        "avx2": (("-march=x86-64-v3", "-mtune=native"), {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"}),
        "portable": (("-march=x86-64", "-mtune=native"), set()),
    }
    if X86
    else {"native": (("-march=native",), set())}
)  # fmt: skip
ISAS = tuple(ISA_BUILDS)
SANITIZE_FLAGS = {"address": ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")}
DTYPES = (jnp.float32, jnp.bfloat16)


class BuildError(RuntimeError):
    """The kernel library could not be built or loaded here."""


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def _flags(isa: str) -> tuple[str, ...]:
    sanitize = os.environ.get("UFBERT_JAX_FFF_CPU_SANITIZE", "")
    if sanitize and sanitize not in SANITIZE_FLAGS:
        raise BuildError(f"UFBERT_JAX_FFF_CPU_SANITIZE={sanitize!r} is not one of {sorted(SANITIZE_FLAGS)}")
    return FLAGS + ISA_BUILDS[isa][0] + SANITIZE_FLAGS.get(sanitize, ())


def _cache_dir() -> Path:
    return Path(os.environ.get("UFBERT_JAX_CACHE", Path.home() / ".cache" / "ufbert_jax"))


@functools.cache
def _cpu_flags() -> str:
    """The CPU's feature flags line ('' where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def supported_isas() -> tuple[str, ...]:
    """The instruction sets of ISAS this CPU runs, widest first (the last one needs nothing)."""
    have = set(_cpu_flags().partition(":")[2].split())
    return tuple(name for name, (_, needs) in ISA_BUILDS.items() if needs <= have)


def isa() -> str:
    """The build the kernel runs: $UFBERT_JAX_FFF_CPU_ISA if set, else the widest this CPU supports."""
    forced = os.environ.get(ISA_ENV, "")
    if not forced:
        return supported_isas()[0]
    if forced not in ISAS:
        raise BuildError(f"{ISA_ENV}={forced!r} is not one of {ISAS}")
    if forced not in supported_isas():
        raise BuildError(f"{ISA_ENV}={forced!r}: this CPU lacks it (it supports {supported_isas()})")
    return forced


def _library_path(compiler: str, flags: tuple[str, ...]) -> Path:
    """Cache path keyed on everything that changes the binary."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256()
    cpu = _cpu_flags() or platform.processor()  # -mtune=native differs between machines sharing a cache
    for part in (SOURCE.read_bytes(), jaxlib.__version__, compiler, version, " ".join(flags), cpu):
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    return _cache_dir() / f"fff_cpu-{key.hexdigest()[:20]}.so"


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    """Compiles into a temporary file beside target, then renames it into place (atomic on POSIX)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *flags, "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"compiling {SOURCE.name} failed: {' '.join(cmd)}\n{result.stderr[-4000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_lock = threading.Lock()


def target(name: str) -> str:
    """The FFI target of the build for instruction set `name`."""
    return f"{TARGET}_{name}"


@functools.cache
def _load(name: str | None = None) -> ctypes.CDLL:
    """Builds (once per cache key) and loads the library for instruction set `name` (default: isa()), and
    registers its FFI target (once per process)."""
    name = name or isa()
    compiler = _compiler()
    if shutil.which(compiler) is None:
        raise BuildError(
            f"C++ compiler {compiler!r} not found (from $CXX, default g++): set $CXX to a C++17 compiler "
            "or install g++ (e.g. `apt-get install g++`)"
        )
    flags = _flags(name)
    with _lock:
        path = _library_path(compiler, flags)
        if not path.exists():
            _build(compiler, flags, path)
        library = ctypes.CDLL(str(path))
        jax.ffi.register_ffi_target(target(name), jax.ffi.pycapsule(library.FffCpu), platform="cpu")
    return library


def built_vector_width(name: str | None = None) -> int:
    """float32 lanes of the SIMD vector the build for `name` (default: isa()) was compiled with."""
    library = _load(name)
    library.FffCpuVectorWidth.restype = ctypes.c_int
    return library.FffCpuVectorWidth()


@functools.cache
def _unavailable_reason(name: str) -> str:
    try:
        _load(name)
    except (BuildError, OSError, subprocess.SubprocessError) as error:
        return f"the FFF CPU kernel is unavailable: {error}"
    return ""


def unavailable_reason() -> str:
    """Why the kernel cannot be used here ('' when it can); builds it on first call."""
    try:
        return _unavailable_reason(isa())
    except BuildError as error:
        return f"the FFF CPU kernel is unavailable: {error}"


def is_available() -> bool:
    """Whether the custom call can be built and loaded here (builds it on first call)."""
    return not unavailable_reason()


def _check(x, w_in, b_in, w_out) -> None:
    """The kernel's operand contract on top of fff_math.check_shapes: 2-D x, float32/bfloat16."""
    fff_math.check_shapes(x, w_in, b_in, w_out)
    if x.ndim != 2:
        raise ValueError(f"x must be [T, H] (use fff.apply for leading axes); got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise TypeError(f"fff_cpu supports float32 and bfloat16; got x dtype {x.dtype}")
    if b_in.dtype not in (jnp.float32, x.dtype):
        raise TypeError(f"b_in must be float32 or x's dtype {x.dtype}; got {b_in.dtype}")


def _call(x, w_in, b_in, w_out) -> jax.Array:
    """The custom call. vmap runs it once per batch element ("sequential"), which is right whether x, the
    weights or both are batched."""
    if reason := unavailable_reason():
        raise RuntimeError(reason)
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)  # y [T, H]
    return jax.ffi.ffi_call(target(isa()), out, vmap_method="sequential")(x, w_in, b_in, w_out)


def fff_cpu(x: jax.Array, w_in: jax.Array, b_in: jax.Array, w_out: jax.Array) -> jax.Array:
    """Conditional FFF forward, XLA CPU custom call: x [T, H]; w_in, w_out [K, N, H]; b_in [K, N] -> [T, H].

    Same semantics and numerics as ``reference``. Not differentiable by itself: ``fff.apply`` is.
    """
    _check(x, w_in, b_in, w_out)
    return _call(x, w_in, b_in, w_out)
