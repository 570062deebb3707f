"""Timing by chained calls inside one jitted loop: shared by the GPU and CPU layer benchmarks.

An op f(x, small, *rest) -> y [T, H] runs many times inside one jitted ``lax.fori_loop``. Every call's
output feeds the next call's (tiny) operand ``small`` through an optimization barrier, so calls cannot
overlap or be skipped, and y is computed whole. Each loop turn makes ``calls_per_turn`` calls that cycle
through the input sets ``xs``, so x does not stay in a cache that one set would fit. Host dispatch is paid
once per loop, and the program's buffers (y included) are allocated once per loop and reused by every call
in it: what remains is the op itself, as inside a jitted model.

``tie_x``: x also passes through the optimization barrier together with ``small``, which makes it
loop-variant at no cost (the barrier is no copy). Without it, work that depends on x and the weights only
is loop-invariant and XLA hoists it out of the loop or shares it between calls. Seen in the compiled CPU
programs: with the dense feedforward's first bias chained (as benchmarks/fff_layer_gpu.py does) ``x @ w1``
leaves the loop, so the loop times about half the FLOPs; with its output bias chained both matmuls leave;
the masked form's logit matmul leaves too. In the compiled GPU program (H200) ``x @ w1`` stayed in the loop
but was computed once per input set and turn: 20 GEMMs for 16 calls instead of 32.

Imports jax and numpy only (the GPU machine has nothing else).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def timed_loop(op, calls_per_turn, tie_x=True):
    """jit(fn(xs, small, rest, n)): n turns of chained calls of op; returns the final small operand."""

    def run(xs, small, rest, n):
        def turn(_, small):
            for call in range(calls_per_turn):
                x = xs[call % len(xs)]
                if tie_x:
                    x, small = lax.optimization_barrier((x, small))
                y = lax.optimization_barrier(op(x, small, *rest))  # [T, H], kept whole
                small = small + 0.0 * y[0, 0].astype(jnp.float32)
            return small

        return lax.fori_loop(0, n, turn, small)

    return jax.jit(run)


class ChainedLoop:
    """op(x, *params) for x in xs, chained in a jitted loop (params[0] is the small operand).

    The constructor compiles and runs one turn (warm-up), then times one turn (``first_s``: seconds per
    call in it) and picks the number of turns that makes a loop last about target_s (1 to max_turns);
    ``sample()`` times one such loop.
    """

    def __init__(self, op, xs, params, calls_per_turn, target_s, max_turns=500, tie_x=True):
        self.loop = timed_loop(op, calls_per_turn, tie_x)
        self.calls_per_turn = calls_per_turn
        self.args = (xs, params[0], params[1:])
        self.run(1)  # compile and warm up
        start = time.perf_counter()
        self.run(1)
        turn_s = time.perf_counter() - start
        self.first_s = turn_s / calls_per_turn
        self.turns = int(np.clip(target_s / turn_s, 1, max_turns))

    def run(self, turns: int) -> None:
        """One loop of `turns` turns, waited for."""
        self.loop(*self.args, turns).block_until_ready()

    def sample(self) -> float:
        """Seconds per call over one timed loop of self.turns turns."""
        start = time.perf_counter()
        self.run(self.turns)
        return (time.perf_counter() - start) / (self.turns * self.calls_per_turn)


def interleaved(samplers: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Every sampler once per round, round by round: load on a shared machine hits them all alike.

    Returns each sampler's samples (seconds per call, say), in round order.
    """
    samples = {name: [] for name in samplers}
    for _ in range(rounds):
        for name, sample in samplers.items():
            samples[name].append(sample())
    return samples
