"""The FFF layer's forward + backward (a training call), side by side: masked, sparse forms and dense FF.

    python benchmarks/fff_train_layer.py [--tokens 16384 65536] [--dtype bfloat16] [--json out.json]
    python benchmarks/fff_train_layer.py --tokens 512 --dtype float32 --hidden 64 --depth 5   # CPU check

One call = the layer's output and its VJP for a fixed cotangent: dx and every weight gradient (the weight
gradients in float32 as the model's float32 parameters receive them), all kept whole by an optimization
barrier. Timed as chained calls inside one jitted loop (benchmarks/timing.py), medians of repeated loops.
Rows: XLA's dense 768-3072-768 FF (crammedBERT-3072's feedforward: Linear, exact GELU, Linear, no biases),
the masked form (the original training form), and every training form of ``ufbert_jax.fff`` that exists
on this backend ("sparse": the XLA path-only VJP; "pallas": the Pallas training kernels on a GPU, from
BlockSizes.routed_min_tokens on; "pallas-routed": the same kernels at every token count).
Imports jax, numpy and this package only.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import timing
from ufbert_jax.kernels import fff_pallas

from ufbert_jax import fff, fff_math


def dense_ff(x, w1, w2):
    """crammedBERT's feedforward: x [T, H] @ w1 [H, W] -> exact GELU -> @ w2 [W, H], no biases."""
    hidden = jnp.dot(x, w1, preferred_element_type=jnp.float32)
    return jnp.dot(fff_math.gelu(hidden).astype(x.dtype), w2, preferred_element_type=jnp.float32).astype(
        x.dtype
    )


def training_call(forward, dtype, cast):
    """op(x, small, cotangent, *weights) -> dx, whose weight gradients (float32) are computed whole.

    The weights arrive in float32 (the model's parameters); those marked in `cast` are cast to `dtype`
    inside, as the model does (the FFF's bias stays float32), so the gradients pass back through the cast.
    `small` (a [1] float32) is the chained operand.
    """

    def op(x, small, cotangent, *weights):
        def layer(x_, *weights_):
            return forward(x_, *(w.astype(dtype) if c else w for w, c in zip(weights_, cast, strict=True)))

        y, vjp = jax.vjp(layer, x, *weights)
        dx, *weight_grads = vjp(cotangent + small[0].astype(dtype))
        # A full sum of every weight gradient keeps it whole: XLA drops what nobody reads (the loop reads y
        # only), and it can narrow a product to the one element that a slice would read.
        kept = sum(jnp.sum(grad, dtype=jnp.float32) for grad in weight_grads)
        return (dx + 0 * y + 0 * kept).astype(dtype)

    return op


# The Pallas training kernels at every token count: "pallas" switches to them at
# BlockSizes.routed_min_tokens only (the masked form below), this row measures them below it too.
ROUTED_EVERYWHERE = "pallas-routed"


def impls(names) -> dict:
    """name -> FFF training function x [T, H], w_in, b_in, w_out -> y (the Pallas rows on a GPU only)."""
    on_gpu = jax.default_backend() == "gpu"
    chosen = {}
    for name in names:
        if name == ROUTED_EVERYWHERE:
            if on_gpu:
                sizes = fff_pallas.BlockSizes(routed_min_tokens=1)
                chosen[name] = functools.partial(fff_pallas.fff_pallas_train, sizes=sizes)
        elif name != "pallas" or on_gpu:
            chosen[name] = fff.resolve_impl(name)
    return chosen


def weights(rng, hidden: int, width: int, trees: int, depth: int) -> tuple[tuple, tuple]:
    """float32 weights ((w1 [H, W], w2 [W, H]), (w_in [K, N, H], b_in [K, N], w_out [K, N, H])).

    N(0, 0.02^2) and a zero bias, the model's initialisation (ufbert_jax.model).
    """
    nodes = 2 ** (depth + 1) - 1

    def weight(*shape, scale):
        return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)

    dense = (weight(hidden, width, scale=0.02), weight(width, hidden, scale=0.02))
    fff_weights = (
        weight(trees, nodes, hidden, scale=0.02),
        weight(trees, nodes, scale=0.0),
        weight(trees, nodes, hidden, scale=0.02),
    )
    return dense, fff_weights


def measure(op, xs, params, args) -> float:
    loop = timing.ChainedLoop(op, xs, params, calls_per_turn=4, target_s=args.target_s)
    return statistics.median(loop.sample() for _ in range(args.repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--depth", type=int, default=11)
    parser.add_argument("--width", type=int, default=3072, help="the dense FF's width")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target_s", type=float, default=0.2, help="seconds per timed loop")
    parser.add_argument(
        "--impls",
        nargs="+",
        default=["masked", "sparse", "pallas"],
        help=f"FFF training forms (masked first), or {ROUTED_EVERYWHERE!r}; on a GPU 'sparse' is an unsorted "
        "scatter-add: slow",
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    rng = np.random.default_rng(0)
    nodes, hidden = 2 ** (args.depth + 1) - 1, args.hidden
    device = jax.devices()[0].device_kind
    print(f"device: {device} ({jax.default_backend()}), jax {jax.__version__}, {dtype.name}")
    print(f"FFF 1x{args.depth} ({nodes} nodes) vs dense {hidden}-{args.width}-{hidden}: forward + backward")
    rows = []
    for tokens in args.tokens:
        xs = [jnp.asarray(rng.standard_normal((tokens, hidden)), dtype) for _ in range(2)]
        cotangent = jnp.asarray(rng.standard_normal((tokens, hidden)), dtype)
        small = jnp.zeros((1,), jnp.float32)
        dense, fff_weights = weights(rng, hidden, args.width, 1, args.depth)
        times = {
            "dense": measure(
                training_call(dense_ff, dtype, (True, True)), xs, (small, cotangent, *dense), args
            )
        }
        for name, forward in impls(args.impls).items():
            times[name] = measure(
                training_call(forward, dtype, (True, False, True)), xs, (small, cotangent, *fff_weights), args
            )
        for name, seconds in times.items():
            row = {
                "tokens": tokens,
                "impl": name,
                "us": 1e6 * seconds,
                "speedup_vs_dense": times["dense"] / seconds,
            }
            rows.append(row)
            print(f"{tokens:>7} {name:<8} {row['us']:>10.1f} us   {row['speedup_vs_dense']:>6.2f}x vs dense"
                  f"   {times['masked'] / seconds:>6.2f}x vs masked")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
