"""One FFF layer call per implementation under Nsight Compute: per-kernel time, memory traffic, stalls.

The ops are compiled and warmed up first; only the calls between cuProfilerStart and cuProfilerStop are
profiled (ncu --profile-from-start off), so XLA's autotuning and the Triton compiles are not.

Run on the GPU machine from the repository root (ncu's default cache control flushes the caches before
each kernel, so every kernel reads its inputs from HBM; --clock-control none keeps the clocks as they run):
    source reproduce/gpu_env.sh   # with .whl carried
    ncu --profile-from-start off --clock-control none --set full -o $OUT/fff \
        python3 benchmarks/profile_gpu.py --tokens 16384
    ncu -i $OUT/fff.ncu-rep --page details > $OUT/fff_details.txt
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import sys

import fff_layer_gpu as layer
import jax
import jax.numpy as jnp
import layer_ops
import numpy as np
from ufbert_jax.kernels import fff_pallas

IMPLS = ("routed", "per_token", "dense3072")


def _profiler(start: bool) -> None:
    """cuProfilerStart/Stop on the primary context, which JAX uses too."""
    cuda = ctypes.CDLL("libcuda.so.1")
    device, context = ctypes.c_int(), ctypes.c_void_p()
    for status in (
        cuda.cuDeviceGet(ctypes.byref(device), 0),
        cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device),
        cuda.cuCtxSetCurrent(context),
        cuda.cuProfilerStart() if start else cuda.cuProfilerStop(),
    ):
        if status:
            raise RuntimeError(f"CUDA driver call failed with status {status}")


def op(name: str):
    """(op(x, *params), dense width or None) for an implementation name of IMPLS."""
    sizes = fff_pallas.BlockSizes()
    if name == "dense3072":
        return layer_ops.dense_ff, layer_ops.DENSE_WIDTHS[name]
    if name == "per_token":
        sizes = dataclasses.replace(sizes, routed_min_tokens=None)
    return layer_ops.fff_op(functools.partial(fff_pallas.fff_pallas, sizes=sizes)), None


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    calls = []
    for name in args.impls:
        fn, width = op(name)
        xs, params = layer.operands(rng, args.tokens, jnp.dtype(args.dtype), width)
        compiled = jax.jit(fn)
        for _ in range(2):  # compile, then one warm call
            compiled(xs[0], *params).block_until_ready()
        calls.append((name, compiled, xs[1], params))
    _profiler(start=True)
    for name, compiled, x, params in calls:
        print(f"profiling {name}", flush=True)
        compiled(x, *params).block_until_ready()
    _profiler(start=False)


if __name__ == "__main__":
    main(sys.argv[1:])
