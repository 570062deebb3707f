"""Random draws and references shared by several test modules.

Every draw builds the property its tests need into the values (tokens clear of routing ties, a padded
row), so a test passes for every seed of the `rng` fixture (tests/conftest.py), not for most.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests import reference_numpy as ref
from ufbert_jax import model, state_dict

# Tokens whose on-path logit (float64, on the operands as the dtype holds them) is closer to 0 than this may
# route differently under float32 accumulation; every implementation accumulates logits in float32.
MARGIN = 1e-3
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}
# The float64 original against a float32 encoder: routing logits closer to 0 than this could flip.
MODEL_MARGIN = 1e-4
ATTEMPTS = 100  # redraws of a model input; each is accepted with probability > 0.5 (see clear_model_input)


def held(a: np.ndarray, dtype) -> np.ndarray:
    """a as float32 NumPy holding exactly the values that `dtype` can hold."""
    return np.array(jnp.asarray(a, dtype).astype(jnp.float32))  # a writable copy


def draw(rng: np.random.Generator, trees: int, depth: int, hidden: int, lead: tuple[int, ...] = (7,)):
    """Fresh FFF operands (float32 numpy): x [*lead, H], w_in/w_out [K, N, H], b_in [K, N].

    The rows of w_in have unit norm, so for x ~ N(0, I) every logit is N(b_in, 1): a logit lands within m
    of 0 with probability at most 0.8 m, whatever the seed drew.
    """
    nodes = 2 ** (depth + 1) - 1
    x = rng.standard_normal((*lead, hidden)).astype(np.float32)
    w_in = rng.standard_normal((trees, nodes, hidden))
    w_in = (w_in / np.linalg.norm(w_in, axis=-1, keepdims=True)).astype(np.float32)
    b_in = (0.3 * rng.standard_normal((trees, nodes))).astype(np.float32)
    w_out = rng.standard_normal((trees, nodes, hidden)).astype(np.float32)
    return x, w_in, b_in, w_out


def reference(x, w_in, b_in, w_out):
    """float64 NumPy reference in the original layout: ([T, H], visited [T, K, L], path margin [T])."""
    trees, nodes, hidden = w_in.shape
    flat = np.asarray(x, np.float64).reshape(-1, hidden)  # [..., H] -> [T, H]
    y, visited = ref.fff_forward(
        flat,
        np.asarray(w_in, np.float64).reshape(trees * nodes, hidden),
        np.asarray(b_in, np.float64).reshape(-1),
        np.asarray(w_out, np.float64).reshape(trees * nodes, hidden).T,
        trees,
    )
    logits = np.einsum("th,knh->tkn", flat, np.asarray(w_in, np.float64)) + np.asarray(b_in, np.float64)
    on_path = np.take_along_axis(logits, visited, axis=-1)  # [T, K, L]
    return y, visited, np.abs(on_path).min(axis=(1, 2))


def unambiguous(x, w_in, b_in, margin=MARGIN):
    """x with the tokens whose routing is within rounding of a tie removed (flattened to [T, H])."""
    flat = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
    _, _, path_margin = reference(flat, w_in, b_in, w_in)
    return flat[path_margin > margin]


def clear_tokens(rng, lead: tuple[int, ...], w_in, b_in, dtype=jnp.float32, margin=MARGIN) -> np.ndarray:
    """x [*lead, H] (float32 holding `dtype` values) whose every on-path logit is farther than margin from 0.

    Draws tokens until enough pass: with draw()'s unit-norm rows a token passes with probability at least
    1 - 0.8 * margin * K * (D + 1), above 0.5 for every margin and shape the tests use.
    """
    count, hidden = math.prod(lead), w_in.shape[-1]
    kept = np.zeros((0, hidden), np.float32)
    while len(kept) < count:
        fresh = held(rng.standard_normal((2 * count + 8, hidden)), dtype)
        kept = np.concatenate([kept, unambiguous(fresh, w_in, b_in, margin)])
    return kept[:count].reshape(*lead, hidden)


def draw_clear(
    rng, trees, depth, hidden, lead=(7,), dtype=jnp.float32, bias_dtype=jnp.float32, margin=MARGIN
):
    """draw() with every token clear of routing ties (clear_tokens), all values held by their dtypes."""
    _, w_in, b_in, w_out = draw(rng, trees, depth, hidden, lead=(0,))
    w_in, b_in, w_out = held(w_in, dtype), held(b_in, bias_dtype), held(w_out, dtype)
    return clear_tokens(rng, lead, w_in, b_in, dtype, margin), w_in, b_in, w_out


def randomise(module: nnx.Module, rng: np.random.Generator) -> None:
    """Every parameter (biases, norms and the positional scale included) to fresh non-trivial values."""
    for _, var in nnx.iter_graph(module):
        if isinstance(var, nnx.Param):
            scale = 0.3 if var.ndim < 2 else 1.0 / np.sqrt(var.shape[-1])
            value = rng.standard_normal(var.shape) * scale
            if var.ndim <= 1:
                value = value + 1.0  # norm scales near 1, positional scale away from 0
            var[...] = jnp.asarray(value, jnp.float32)


def tokens_and_mask(rng, cfg, batch=3, seq_len=12):
    """(ids, mask) [B, S]: row 0 unpadded, every other row padded (pad id 0) after S/2 to S-1 tokens."""
    ids = rng.integers(1, cfg.vocab_size, (batch, seq_len))
    lengths = rng.integers(seq_len // 2, seq_len, batch)
    lengths[0] = seq_len
    mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)  # [B, S]
    return ids * mask, mask


def reference_arch(cfg) -> dict:
    """The float64 original's architecture arguments (tests/reference_numpy.py) for a ModelConfig."""
    trees = cfg.fff_trees if cfg.feedforward == "fff" else None
    return dict(layers=cfg.layers, heads=cfg.heads, trees=trees, eps=cfg.norm_eps)


def clear_model_input(rng, module: nnx.Module, cfg, margin=MODEL_MARGIN, **shape):
    """Randomises `module` and draws (ids, mask) (tokens_and_mask) until no FFF routing decision of the
    float64 original is within `margin` of a tie, so float32 rounding cannot flip one.

    The logits are about N(0, 1) (randomise's 1/sqrt(H) weights on unit-variance normed states): a draw of
    a few hundred decisions at margin 1e-4 fails with probability about 0.03.
    """
    for _ in range(ATTEMPTS):
        randomise(module, rng)
        ids, mask = tokens_and_mask(rng, cfg, **shape)
        if cfg.feedforward != "fff":
            return ids, mask
        margins = []
        sd = state_dict.to_state_dict(module)
        ref.encoder_forward(sd, ids, mask, margins=margins, **reference_arch(cfg))
        if min(margins, default=np.inf) > margin:
            return ids, mask
    raise AssertionError(f"no draw in {ATTEMPTS} kept every routing logit farther than {margin} from 0")


def route_by_bias(module: nnx.Module, rng: np.random.Generator, margin: float = 0.25) -> None:
    """Every FFF node's logit gets its bias's sign, at least `margin` from 0, for every input.

    b_in = +-2 margin at random; each w_in row is scaled so that |w . LN2(h)| <= margin (Cauchy-Schwarz:
    |LN2(h)| <= max|scale| sqrt(H) + |bias|). Routing then varies between nodes and trees, not tokens: for
    comparisons whose rounding (bfloat16) is far coarser than any margin a redraw could reach.
    """
    for _, block in nnx.iter_graph(module):
        if isinstance(block, model.Block) and isinstance(block.ffn, model.FastFeedForward):
            scale, bias = np.asarray(block.norm2.scale[...]), np.asarray(block.norm2.bias[...])
            bound = np.abs(scale).max() * np.sqrt(scale.size) + np.linalg.norm(bias)
            w_in = np.asarray(block.ffn.w_in[...], np.float64)
            norms = np.linalg.norm(w_in, axis=-1, keepdims=True)
            block.ffn.w_in[...] = jnp.asarray(0.99 * margin * w_in / (norms * bound), jnp.float32)
            signs = rng.choice([-1.0, 1.0], size=block.ffn.b_in.shape)
            block.ffn.b_in[...] = jnp.asarray(2 * margin * signs, jnp.float32)
