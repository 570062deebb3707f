"""FFF layer on CPU: the XLA custom call vs XLA's dense feedforward, UltraFastBERT-1x11 shapes, float32.

    python benchmarks/fff_layer.py cpu [--tokens 1,128,2048,16384] [--threads 1,2] [--rounds 3]
                                       [--timing loop|call] [--out PNG]

Variants, timed side by side in one process per thread count (interleaved round by round, so load on a shared
machine hits them alike): the custom call (``fff_cpu``), the dense 768->3072->768 and 768->4095->768 GELU
feedforwards (benchmarks/layer_ops.py), and the pure-JAX ``conditional`` and ``masked`` forms. Each thread
count runs in its own subprocess pinned with ``taskset`` to that many cores, with XLA's intra-op pool set by
``XLA_FLAGS`` (``--xla_cpu_multi_thread_eigen`` and ``intra_op_parallelism_threads``, after the caller's own
``XLA_FLAGS``); the table shows the measured CPU time / wall time of each variant, i.e. how many threads
actually ran. Prints medians (ms) and
speedups over dense-3072, saves a plot of speedup against tokens to ``--out``. Expected at 16384 tokens on 2
threads: on a Zen 1 (AVX2) the custom call over 100x dense-3072 with loop timing, about 100x with call
timing; on a Zen 4 (AVX-512), where the dense baseline is 2.5x faster, 69-85x with loop timing
(docs/cpu_kernel.md has the measured numbers and machines).

Two timing modes (``--timing``), the same for every variant:

- ``loop`` (default): chained calls inside one jitted ``lax.fori_loop`` (benchmarks/timing.py, the method of
  the GPU benchmark), each call's output feeding a tiny operand of the next through an optimization barrier,
  cycling through ROTATE input sets; x passes through the barrier too (``tie_x``), else XLA hoists the dense
  forms' matmuls out of the loop (timing.py says which). Host dispatch is paid once per loop, and XLA
  allocates the program's buffers (y included) once per loop, so the pages of y are faulted in and zeroed by
  the OS once and then reused. That is how the layer runs inside a jitted model, where XLA's buffer assignment
  places y in the program's reused scratch memory; hence the default.
- ``call``: one jitted call per Python call, back to back. Each call pays the host dispatch (tens of
  microseconds: it dominates at 1 token) and a fresh top-level output buffer from XLA, which the OS zeroes
  on first touch. That is a standalone op called from Python; the fresh 50 MB y at 16384 tokens costs the
  custom call about a fifth of its time (about 5 ms on 2 threads) and the dense forms, which run 100 times
  longer, hardly anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import layer_ops
import numpy as np
import timing
from layer_ops import BASELINE, Curve
from ufbert_jax.kernels import fff_cpu

from ufbert_jax import fff_math

VARIANTS = ("fff_cpu", "dense3072", "dense4095", "conditional", "masked")
TARGET_SPEEDUP = 100.0
TIMINGS = ("loop", "call")
MIN_ROUND_S = 0.2  # call mode: each round repeats a variant until this much time has passed (at least once)
# Loop mode: input sets cycled through (two x of 2048 or more tokens exceed the 8 MB L3), and the wall time of
# one timed loop (at least one turn), long enough that the loop's one allocation of y is amortised over many
# calls of the fast variants.
ROTATE = 2
LOOP_S = 0.5
MAX_TURNS = 100_000


def parse(argv: list[str]) -> argparse.Namespace:
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(prog="fff_layer.py cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=ints, default=[1, 128, 2048, 16384])
    parser.add_argument("--threads", type=ints, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (median reported)")
    parser.add_argument("--timing", choices=TIMINGS, default="loop", help="see the module docstring")
    parser.add_argument("--out", default="docs/fff_layer_cpu.png")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: one thread count
    return parser.parse_args(argv)


def make_variants(tokens: int, rng: np.random.Generator) -> dict[str, tuple]:
    """Every variant as (op, xs, params) for timing.ChainedLoop: ROTATE input sets x [T, H], float32."""
    xs = layer_ops.inputs(rng, tokens, jnp.float32, ROTATE)
    fff_params = layer_ops.fff_params(rng, jnp.float32)
    dense = {
        name: (layer_ops.dense_ff, xs, layer_ops.dense_params(rng, width, jnp.float32))
        for name, width in layer_ops.DENSE_WIDTHS.items()
    }
    return {
        "fff_cpu": (layer_ops.fff_op(fff_cpu.fff_cpu), xs, fff_params),
        **dense,
        "conditional": (layer_ops.fff_op(fff_math.conditional), xs, fff_params),
        "masked": (layer_ops.fff_op(fff_math.masked), xs, fff_params),
    }


def time_round(fn, args) -> tuple[float, float]:
    """Seconds per call and CPU seconds per wall second over >= MIN_ROUND_S of back-to-back calls.

    One untimed call first: the previous variant's buffers are freed in the background after it returns
    (over 1 GB for the masked form at 16384 tokens), and the unmapping stalls the next call's page faults
    (measured: 230 ms instead of 30 ms for the custom call right after the masked form).
    """
    fn(*args).block_until_ready()
    calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while calls == 0 or time.perf_counter() - wall0 < MIN_ROUND_S:
        fn(*args).block_until_ready()
        calls += 1
    wall = time.perf_counter() - wall0
    return wall / calls, (time.process_time() - cpu0) / wall


def call_timer(op, xs, params):
    """Call mode: a round of jit(op)(x, *params) calls; compiles and warms up first."""
    fn, args = jax.jit(op), (xs[0], *params)
    fn(*args).block_until_ready()
    return lambda: time_round(fn, args)


def loop_timer(op, xs, params):
    """Loop mode: a round is one timed loop of chained calls (benchmarks/timing.py); compiles and warms up.

    One untimed turn first, for the reason given in time_round: each loop allocates its buffers afresh,
    and right after the masked form their page faults stalled the custom call's loop by about 240 ms.
    """
    loop = timing.ChainedLoop(op, xs, params, ROTATE, LOOP_S, MAX_TURNS)

    def sample() -> tuple[float, float]:
        loop.run(1)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        seconds = loop.sample()
        return seconds, (time.process_time() - cpu0) / (time.perf_counter() - wall0)

    return sample


def worker(args: argparse.Namespace) -> None:
    """Times every variant at every token count in this process; prints one JSON line per token count."""
    rng = np.random.default_rng(0)
    make_timer = {"loop": loop_timer, "call": call_timer}[args.timing]
    for tokens in args.tokens:
        timers = {name: make_timer(*variant) for name, variant in make_variants(tokens, rng).items()}
        seconds = {name: [] for name in timers}
        cpu = {name: [] for name in timers}
        for _ in range(args.rounds):
            for name, sample in timers.items():
                s, c = sample()
                seconds[name].append(s)
                cpu[name].append(c)
        result = {
            "threads": args.worker,
            "tokens": tokens,
            "timing": args.timing,
            "ms": {n: 1e3 * float(np.median(v)) for n, v in seconds.items()},
            "ms_spread": {n: [1e3 * min(v), 1e3 * max(v)] for n, v in seconds.items()},
            "cpu_per_wall": {n: float(np.median(v)) for n, v in cpu.items()},
        }
        print(json.dumps(result), flush=True)
        del timers


def run_thread_count(threads: int, args: argparse.Namespace) -> list[dict]:
    """Runs the worker pinned to `threads` cores with XLA's intra-op pool of that size."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    if len(cores) < threads:
        raise SystemExit(f"--threads {threads} needs {threads} cores; this process may use {len(cores)}")
    multi = "true" if threads > 1 else "false"
    env = {
        **os.environ,
        # The caller's XLA_FLAGS first (e.g. --xla_cpu_max_isa=AVX2 for an AVX2 stand-in), then the threads.
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen={multi} "
        f"intra_op_parallelism_threads={threads}".strip(),
    }
    cmd = [
        "taskset",
        "-c",
        ",".join(map(str, cores)),
        sys.executable,
        __file__,
        "--worker",
        str(threads),
        "--tokens",
        ",".join(map(str, args.tokens)),
        "--rounds",
        str(args.rounds),
        "--timing",
        args.timing,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"worker for {threads} threads failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def table(results: list[dict]) -> str:
    """Medians (ms), speedup over dense-3072 and CPU/wall (threads actually busy) per variant."""
    head = f"{'threads':>7} {'tokens':>6} " + " ".join(f"{v:>22}" for v in VARIANTS)
    units = " " * 14 + " ".join(f"{'ms (speedup) cpu/wall':>22}" for _ in VARIANTS)
    lines = [f"timing: {results[0]['timing']}", head, units]
    for r in results:
        cells = []
        for v in VARIANTS:
            speedup = r["ms"][BASELINE] / r["ms"][v]
            cells.append(f"{r['ms'][v]:9.3f} ({speedup:6.1f}x) {r['cpu_per_wall'][v]:3.1f}")
        lines.append(f"{r['threads']:>7} {r['tokens']:>6} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def plot(results: list[dict], out: str) -> None:
    """Speedup over dense-3072 against tokens, one line per variant and thread count."""
    most = max(r["threads"] for r in results)
    curves = []
    for threads in sorted({r["threads"] for r in results}):
        rows = sorted((r for r in results if r["threads"] == threads), key=lambda r: r["tokens"])
        for variant, style in zip(VARIANTS, ("o-", "s--", "^--", "v:", "d:"), strict=True):
            if variant != BASELINE:
                label = f"{variant}, {threads} thread{'s' * (threads > 1)}"
                speedup = [r["ms"][BASELINE] / r["ms"][variant] for r in rows]
                tokens = [r["tokens"] for r in rows]
                curves.append(Curve(label, tokens, speedup, style, alpha=1.0 if threads == most else 0.5))
    title = f"UltraFastBERT-1x11 FFF layer on CPU, float32, {results[0]['timing']} timing"
    layer_ops.speedup_plot(curves, TARGET_SPEEDUP, title, out)


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.worker is not None:
        worker(args)
        return
    results = [r for threads in args.threads for r in run_thread_count(threads, args)]
    print(table(results))
    plot(results, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
