"""How far apart are the FFF implementations? Max abs differences on fresh random data, 1x11 shapes.

    python benchmarks/fff_equivalence.py [--tokens 4096] [--impls masked,conditional,cpu]

Compares every implementation with the first one (outputs and input/weight gradients for the
differentiable ones), in float32 and bfloat16, excluding tokens whose routing is within rounding of a
tie (an on-path logit closer to 0 than 1e-3, judged in float64 on the dtype-rounded operands): those
tokens may legitimately take different paths. Prints one row per (dtype, impl): the largest absolute
difference of the outputs y, then max |a - b| / max |b| for y and the gradients of x, w_in, b_in and
w_out (gradients come in the operands' dtype, so bfloat16 rows include bfloat16 rounding).
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ufbert_jax import fff, fff_math

# Judged in float64 on the operands as the dtype holds them: every implementation accumulates logits in
# float32, so only accumulation order differs between them.
MARGIN = 1e-3
COLUMNS = ("max|dy|", "rel y", "rel dx", "rel dW_in", "rel db_in", "rel dW_out")


def operands(rng, tokens, trees, depth, hidden):
    nodes = 2 ** (depth + 1) - 1
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    w_in = (rng.standard_normal((trees, nodes, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b_in = (0.1 * rng.standard_normal((trees, nodes))).astype(np.float32)
    w_out = (rng.standard_normal((trees, nodes, hidden)) / np.sqrt(hidden)).astype(np.float32)
    return x, w_in, b_in, w_out


def clear_tokens(x, w_in, b_in, margin):
    """Tokens whose float64 path never passes a logit within `margin` of 0."""
    x64, w64, b64 = (np.asarray(a, np.float64) for a in (x, w_in, b_in))
    node = np.zeros((x.shape[0], w_in.shape[0]), np.int64)  # [T, K]
    closest = np.full(x.shape[0], np.inf)
    for _ in range(fff_math.depth_from_nodes(w_in.shape[1]) + 1):
        rows = w64[np.arange(w_in.shape[0])[None], node]  # [T, K, H]
        logit = np.einsum("th,tkh->tk", x64, rows) + b64[np.arange(w_in.shape[0])[None], node]
        closest = np.minimum(closest, np.abs(logit).min(axis=1))
        node = 2 * node + 1 + (logit > 0)
    return closest > margin


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--trees", type=int, default=1)
    parser.add_argument("--depth", type=int, default=11)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--impls", default="masked,conditional")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    impls = args.impls.split(",")
    rng = np.random.default_rng(args.seed)
    print(f"{'dtype':9} {'impls':24} {'tokens kept':>12} " + " ".join(f"{c:>10}" for c in COLUMNS))
    for dtype in ("float32", "bfloat16"):
        x, w_in, b_in, w_out = operands(rng, args.tokens, args.trees, args.depth, args.hidden)
        w_rounded = np.asarray(jnp.asarray(w_in, dtype).astype(jnp.float32))
        x = x[clear_tokens(np.asarray(jnp.asarray(x, dtype).astype(jnp.float32)), w_rounded, b_in, MARGIN)]
        args_ = (
            jnp.asarray(x, dtype),
            jnp.asarray(w_in, dtype),
            jnp.asarray(b_in),
            jnp.asarray(w_out, dtype),
        )
        cotangent = jnp.asarray(rng.standard_normal(x.shape), dtype)

        def outputs(impl, args_=args_, cotangent=cotangent):
            y, vjp = jax.vjp(functools.partial(fff.apply, impl=impl), *args_)
            return [np.asarray(v, np.float32) for v in (y, *vjp(cotangent))]

        base = outputs(impls[0])
        for impl in impls[1:]:
            got = outputs(impl)
            diffs = [np.abs(got[0] - base[0]).max()]
            diffs += [np.abs(a - b).max() / np.abs(b).max() for a, b in zip(got, base, strict=True)]
            print(
                f"{dtype:9} {impl + ' vs ' + impls[0]:24} {x.shape[0]:>12} "
                + " ".join(f"{d:>10.3g}" for d in diffs)
            )


if __name__ == "__main__":
    main()
