"""GPU part of the FFF layer benchmark: the Pallas kernel vs XLA's dense feedforward and the pure-JAX forms.

UltraFastBERT-1x11 shapes (H=768, one tree of depth 11: 4095 nodes, 12 visited per token) against dense
FFs 768->3072->768 (crammedBERT's) and 768->4095->768 (same width as the tree), bf16 and fp32; the ops and
operands are benchmarks/layer_ops.py's.

Timing (benchmarks/timing.py): each op runs many times inside one jitted ``lax.fori_loop``; every call's
output feeds the next call's (tiny) bias through an optimization barrier, together with x, so calls cannot
overlap, be skipped or share work, and the loop rotates between 4 input sets so x does not sit in the 60 MB
L2. A loop turn (16 calls) pays one host-side predicate check of XLA's while loop, a few microseconds, so
small-T times are upper bounds. Reported: median over repeats of the time per call, the minimum bytes (x
read, y written, weights read once) over that time, and the ratio to the measured device copy bandwidth.

Run on the GPU machine from the repository root, `.whl` carried (reproduce/gpu_env.sh installs the repo):
    source reproduce/gpu_env.sh && python3 benchmarks/fff_layer_gpu.py --out $OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import layer_ops
import numpy as np
import timing
from jax import lax
from layer_ops import DEPTH, Curve, fff_op
from ufbert_jax.kernels import fff_pallas, fff_pallas_routed
from ufbert_jax.kernels.pallas_math import Tiling

from ufbert_jax import fff_math

TOKENS = (1, 128, 2048, 16384, 65536)
ROTATE = 4  # input sets: 4 x 25 MB of x at 16384 tokens bf16 exceeds the 60 MB L2
CALLS_PER_TURN = 16  # calls per loop turn, cycling the input sets: amortises the turn's predicate sync
TARGET_S = 0.05  # wall time of one timed loop


def operands(rng, tokens, dtype, width=None):
    """ROTATE inputs x [T, H] and parameters: the FFF's (b_in, w_in, w_out), or dense_ff's of that width."""
    xs = layer_ops.inputs(rng, tokens, dtype, ROTATE)
    if width is None:
        return xs, layer_ops.fff_params(rng, dtype)
    return xs, layer_ops.dense_params(rng, width, dtype)


def seconds_per_call(op, xs, params, repeats=5):
    """Median seconds per call of op(x, *params), synchronised on the device, host overhead amortised."""
    # x tied to the chained operand (timing.py): untied, XLA computed the dense FF's x @ w1 once per input set
    # and loop turn and shared it between calls: dense3072 timed 310 us instead of 414 us at 16384 tokens
    # bf16 (docs/gpu_kernel.md).
    loop = timing.ChainedLoop(op, xs, params, CALLS_PER_TURN, TARGET_S, tie_x=True)
    return statistics.median(loop.sample() for _ in range(repeats))


def copy_bandwidth(dtype=jnp.bfloat16, elements=2**29):
    """Device copy bandwidth in bytes/s: an incremented copy of a 1 GiB array, bytes read plus written.

    The increment keeps XLA from simplifying the body away (a multiply by 1.0 was, giving 58 TB/s).
    """
    a = jnp.ones((elements,), dtype)
    loop = jax.jit(lambda a, n: lax.fori_loop(0, n, lambda _, v: v + jnp.asarray(1, dtype), a))
    loop(a, 1).block_until_ready()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        loop(a, 20).block_until_ready()
        samples.append((time.perf_counter() - start) / 20)
    return 2 * a.nbytes / statistics.median(samples)


def min_bytes(xs, params):
    """Each input read once, the output written once: x, y and all parameters."""
    return 2 * xs[0].nbytes + sum(p.nbytes for p in params)


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def variants():
    """Kernel variants for the sweep at 16384 tokens bf16: (name, BlockSizes); the first is the default.

    The profile (benchmarks/profile_gpu.py, docs/gpu_kernel.md) found both routed steps latency-bound: one
    wave of programs, 2-3 per SM, DRAM 30% busy, warps waiting on loads. So the sweep varies how much each
    program keeps in flight (hidden chunk and pipeline depth), how many tokens share each weight row read
    (the tokens per program: at 64 tokens both steps read 2-3 KB of weights per token from the L2, more than
    the 1.5 KB of x), and the split between routed top levels and subtree levels (LS = sub_levels). The
    rows of docs/results/fff_layer_gpu_routed_sweep.jsonl name their sizes.
    """
    sizes, tiling = fff_pallas.BlockSizes, Tiling
    previous = tiling(64, 4, 128, 2)  # both steps' tiling before the profile: 1 chunk in flight
    return [
        ("routed default", sizes()),
        ("routed previous default HC128 st2", sizes(route=previous, tile=previous)),
        ("routed route HC64 st3", sizes(route=tiling(64, 4, 64, 3))),
        ("routed tile HC64 st3", sizes(tile=tiling(64, 4, 64, 3))),
        ("routed route TR128 w8", sizes(route=tiling(128, 8, 64, 4))),
        ("routed tile TB128 w8", sizes(tile=tiling(128, 8, 64, 4))),
        ("routed S6", sizes(sub_levels=6)),
        ("routed S6 route TR128 w8", sizes(sub_levels=6, route=tiling(128, 8, 64, 4))),
    ]


def route_only(sizes):
    """The routed kernel's routing step alone, as an op of the timed loop (output [B, T + TR] token ids)."""

    def op(x, b_in, w_in, w_out):
        del w_out
        members, _, _ = fff_pallas_routed.route_step(
            x, w_in[0], b_in[0], sub_levels=sizes.sub_levels, tiling=sizes.route, interpret=False
        )
        return members

    return op


def sweep(rng, log):
    """Times kernel variants at 16384 tokens bf16 and each routing step, then the fastest routing step with
    the fastest tiles; returns the fastest sizes."""
    xs, params = operands(rng, 16384, jnp.bfloat16)
    b_in, w_in, w_out = params
    with jax.default_matmul_precision("highest"):
        want = fff_math.conditional(xs[0], w_in, b_in, w_out)
    routing_us = {}  # (S, route Tiling) -> us of the routing step alone

    def run(name, sizes):
        def impl(x, w_in, b_in, w_out):
            return fff_pallas.fff_pallas(x, w_in, b_in, w_out, sizes=sizes)

        err = relative_error(impl(xs[0], w_in, b_in, w_out), want)
        us = seconds_per_call(fff_op(impl), xs, params) * 1e6
        key = (sizes.sub_levels, sizes.route)
        if key not in routing_us:
            routing_us[key] = seconds_per_call(route_only(sizes), xs, params) * 1e6
        row = {
            "variant": name,
            "sizes": repr(sizes),
            "us": us,
            "rel_err": err,
            "route_us": routing_us[key],
        }
        log.write(json.dumps(row) + "\n")
        print(
            f"  {name:32s} {us:8.1f} us (routing {routing_us[key]:6.1f} us) rel err {err:.1e}",
            flush=True,
        )
        return row

    rows = [(run(name, sizes), sizes) for name, sizes in variants()]
    for sub_levels in sorted({sizes.sub_levels for _, sizes in rows}):
        group = [r for r in rows if r[1].sub_levels == sub_levels]
        route = min(group, key=lambda r: r[0]["route_us"])[1].route
        tile = min(group, key=lambda r: r[0]["us"] - r[0]["route_us"])[1].tile  # the tiles' share
        combined = dataclasses.replace(group[0][1], route=route, tile=tile)
        if combined not in [sizes for _, sizes in rows]:
            rows.append((run(f"routed S{sub_levels} fastest route + tiles", combined), combined))
    best_row, best = min(rows, key=lambda r: r[0]["us"])
    print(f"fastest: {best_row['variant']} {best}", flush=True)
    return best


def layer_table(rng, tokens_list, dtypes, sizes, log):
    """Times every implementation at every token count and dtype: list of result dicts.

    "pallas" is the kernel as "auto" runs it (routed from sizes.routed_min_tokens tokens), "per_token" the
    per-token kernel alone where the two differ.
    """
    per_token = dataclasses.replace(sizes, routed_min_tokens=None)
    impls = {
        **{name: (width, layer_ops.dense_ff) for name, width in layer_ops.DENSE_WIDTHS.items()},
        "conditional": (None, fff_op(fff_math.conditional)),
        "pallas": (None, fff_op(functools.partial(fff_pallas.fff_pallas, sizes=sizes))),
        "per_token": (None, fff_op(functools.partial(fff_pallas.fff_pallas, sizes=per_token))),
    }
    results = []
    for dtype in dtypes:
        for tokens in tokens_list:
            for name, (width, op) in impls.items():
                if name == "per_token" and not fff_pallas.uses_routed(1, DEPTH, tokens, dtype, sizes):
                    continue  # "pallas" is the per-token kernel at this size
                xs, params = operands(rng, tokens, dtype, width)
                seconds = seconds_per_call(op, xs, params)
                row = {
                    "dtype": jnp.dtype(dtype).name,
                    "tokens": tokens,
                    "impl": name,
                    "us": seconds * 1e6,
                    "bytes_per_s": min_bytes(xs, params) / seconds,
                }
                results.append(row)
                log.write(json.dumps(row) + "\n")
                print(f"  {row['dtype']:8s} {tokens:6d} {name:12s} {seconds * 1e6:10.1f} us", flush=True)
    return results


def plot(results, path):
    """Speedup over dense3072 vs tokens, one line per (implementation, dtype)."""
    base = {(r["dtype"], r["tokens"]): r["us"] for r in results if r["impl"] == layer_ops.BASELINE}
    curves = []
    for dtype in sorted({r["dtype"] for r in results}):
        for impl in ("pallas", "per_token", "conditional", "dense4095"):
            points = sorted((r["tokens"], base[dtype, r["tokens"]] / r["us"]) for r in results
                            if r["impl"] == impl and r["dtype"] == dtype)  # fmt: skip
            if points:
                tokens, speedup = zip(*points, strict=True)
                curves.append(Curve(f"{impl} {dtype}", tokens, speedup))
    layer_ops.speedup_plot(curves, 10.0, "UltraFastBERT-1x11 FFF layer on an H200", path)


def print_table(results, bandwidth):
    base = {(r["dtype"], r["tokens"]): r["us"] for r in results if r["impl"] == layer_ops.BASELINE}
    print(f"\ncopy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)")
    print(f"{'dtype':8s} {'tokens':>6s} {'impl':12s} {'us':>10s} {'vs 3072':>8s} {'TB/s':>6s} of copy")
    for r in results:
        speedup = base[r["dtype"], r["tokens"]] / r["us"]
        print(f"{r['dtype']:8s} {r['tokens']:6d} {r['impl']:12s} {r['us']:10.1f} {speedup:7.2f}x "
              f"{r['bytes_per_s'] / 1e12:6.2f} {r['bytes_per_s'] / bandwidth:7.0%}")  # fmt: skip


def replot(paths, out):
    """Table and plot from earlier runs' logs (rows of layer_table; the copy bandwidth of the first log)."""
    rows = [json.loads(line) for path in paths for line in open(path)]
    bandwidth = next(r["copy_bytes_per_s"] for r in rows if "copy_bytes_per_s" in r)
    results = sorted((r for r in rows if "impl" in r), key=lambda r: (r["dtype"], r["tokens"]))
    os.makedirs(out, exist_ok=True)
    plot(results, os.path.join(out, "fff_layer_gpu.png"))
    print_table(results, bandwidth)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmark_out"), help="log and plot folder")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--sweep", action="store_true", help="time kernel variants first; table the fastest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--replot", nargs="+", metavar="JSONL", help="no timing: table and plot the rows of earlier logs"
    )
    args = parser.parse_args(argv)
    if args.replot:
        replot(args.replot, args.out)
        return
    if jax.default_backend() != "gpu":
        raise SystemExit(f"needs a GPU; jax sees {jax.devices()}")
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
    bandwidth = copy_bandwidth()
    with open(os.path.join(args.out, "fff_layer_gpu.jsonl"), "w", buffering=1) as log:  # line-buffered
        log.write(json.dumps({"copy_bytes_per_s": bandwidth}) + "\n")
        sizes = sweep(rng, log) if args.sweep else fff_pallas.BlockSizes()
        results = layer_table(rng, args.tokens, [jnp.dtype(d) for d in args.dtypes], sizes, log)
    plot(results, os.path.join(args.out, "fff_layer_gpu.png"))
    print_table(results, bandwidth)


if __name__ == "__main__":
    main(sys.argv[1:])
