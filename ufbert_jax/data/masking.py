"""MLM masking of the original recipe ("sparse prediction"), as a pure function of its randomness.

Per row, exactly P = round(0.25 S) positions are predicted (32 of 128), drawn uniformly without
replacement among the non-special tokens; of them round(0.8 P) (26) become <mask>, round(0.1 P) (3) a
token drawn uniformly from the non-special vocabulary (it may equal the original, as in BERT), and the
rest (3) stay unchanged. The loss is taken only at `positions`, against `labels`.

The randomness comes either from a numpy Generator (`mask_sequences`) or, for the loader, from a
counter-based hash of (seed, record index) per row (`mask_records`), so a row's masking does not depend
on which batch it lands in; both feed the same `apply_masking`.

Shapes: B batch, S sequence, P predicted positions, V vocab.
"""

from __future__ import annotations

import numpy as np

from ufbert_jax.data.tokenizer import SpecialIds

IGNORED_LABEL = -1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's state increment


def predicted_counts(
    seq_len: int, predict_fraction: float, mask_fraction: float, random_fraction: float
) -> tuple[int, int, int]:
    """(P, masked, random) for rows of `seq_len` tokens; the unchanged rest is P - masked - random."""
    p = round(predict_fraction * seq_len)
    masked, random = round(mask_fraction * p), round(random_fraction * p)
    if not 0 < p <= seq_len or masked + random > p:
        raise ValueError(
            f"{predict_fraction=} of {seq_len=} gives P={p} with {masked} masked and {random} random tokens;"
            " expected 0 < P <= seq_len and masked + random <= P"
        )
    return p, masked, random


def apply_masking(
    tokens: np.ndarray,
    order_keys: np.ndarray,
    draws: np.ndarray,
    special: SpecialIds,
    vocab_size: int,
    *,
    predict_fraction: float = 0.25,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Masks `tokens` [B, S] given its randomness; returns input_ids [B, S], positions [B, P], labels [B, P].

    order_keys [B, S] are i.i.d. uniform in [0, 1): the eligible positions with the P smallest keys are
    predicted, the smallest `masked` of those masked, the next `random` replaced. draws [B, P] are i.i.d.
    uniform ints in [0, V - 7), mapped to non-special ids for the replaced ones. All outputs are int32;
    positions ascend within a row. A row with fewer than P non-special tokens predicts all of them (masked
    first, then random, then unchanged) and pads its positions with special-token positions whose label
    is IGNORED_LABEL (-1): the loss must skip labels < 0.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or order_keys.shape != tokens.shape:
        raise ValueError(f"tokens.shape={tokens.shape}, order_keys.shape={order_keys.shape}; expected [B, S]")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids span [{tokens.min()}, {tokens.max()}], expected [0, {vocab_size=})")
    batch, seq_len = tokens.shape
    p, masked, random = predicted_counts(seq_len, predict_fraction, mask_fraction, random_fraction)
    if draws.shape != (batch, p):
        raise ValueError(f"draws.shape={draws.shape}, expected [B, P]={(batch, p)}")
    specials = np.array(sorted(special.all()))

    eligible = ~np.isin(tokens, specials)  # [B, S]
    # Sorting i.i.d. keys gives a uniform random order of the eligible positions; ineligible ones sort last.
    picked = np.argsort(np.where(eligible, order_keys, 2.0), axis=1, kind="stable")[:, :p]  # [B, P]
    valid = np.take_along_axis(eligible, picked, axis=1)  # [B, P]
    labels = np.take_along_axis(tokens, picked, axis=1)  # [B, P]

    # The slot in the random order decides the treatment: [0, masked) mask, then random, then unchanged.
    slot = np.arange(p)[None, :]  # [1, P]
    random_ids = np.asarray(draws, np.int64)  # [B, P]
    for s in specials:  # ascending: the r-th non-special id is r shifted past each special at or below it
        random_ids = random_ids + (random_ids >= s)
    replacement = np.where(slot < masked, special.mask, labels)  # [B, P]
    replacement = np.where((slot >= masked) & (slot < masked + random), random_ids, replacement)

    input_ids = tokens.astype(np.int32, copy=True)
    rows = np.broadcast_to(np.arange(batch)[:, None], (batch, p))  # [B, P]
    input_ids[rows[valid], picked[valid]] = replacement[valid]

    order = np.argsort(np.where(valid, picked, seq_len + picked), axis=1, kind="stable")  # padding last
    return {
        "input_ids": input_ids,
        "positions": np.take_along_axis(picked, order, axis=1).astype(np.int32),
        "labels": np.take_along_axis(np.where(valid, labels, IGNORED_LABEL), order, axis=1).astype(np.int32),
    }


def as_generator(seed_or_key) -> np.random.Generator:
    """A Generator as is; array-likes (a raw jax key, its key_data) by their int words; else default_rng."""
    if isinstance(seed_or_key, np.random.Generator):
        return seed_or_key
    if hasattr(seed_or_key, "__array__"):
        seed_or_key = np.asarray(seed_or_key).ravel().tolist()
    return np.random.default_rng(seed_or_key)


def mask_sequences(
    seed_or_key,
    tokens: np.ndarray,
    special: SpecialIds,
    vocab_size: int,
    *,
    predict_fraction: float = 0.25,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Masks `tokens` [B, S] (see `apply_masking`) with randomness from a numpy Generator.

    `seed_or_key` is a numpy Generator, anything `np.random.default_rng` takes (an int, a tuple of ints,
    a SeedSequence) or a raw jax key (`jax.random.PRNGKey(0)`, `jax.random.key_data(key)`), whose words
    seed a numpy Generator: the draws are numpy's, not jax.random's. The output is a pure function of it
    and the inputs (a Generator is advanced: pass a fresh one to repeat a result).
    """
    rng = as_generator(seed_or_key)
    tokens = np.asarray(tokens)
    p, _, _ = predicted_counts(tokens.shape[-1], predict_fraction, mask_fraction, random_fraction)
    order_keys = rng.random(tokens.shape)  # [B, S]
    draws = rng.integers(vocab_size - len(special.all()), size=(len(tokens), p))  # [B, P]
    fractions = dict(
        predict_fraction=predict_fraction, mask_fraction=mask_fraction, random_fraction=random_fraction
    )
    return apply_masking(tokens, order_keys, draws, special, vocab_size, **fractions)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 arrays (arrays wrap on overflow, as the algorithm needs)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def record_stream(seed: int, indices: np.ndarray, count: int) -> np.ndarray:
    """`count` uint64 draws per record: SplitMix64 seeded by hash(seed, index); [B] -> [B, count].

    Counter-based, so a record's draws depend only on (seed, index), never on its batch or neighbours.
    """
    seed_state = _mix64(np.array([seed % 2**64], np.uint64) + np.uint64(_GOLDEN_GAMMA))  # [1]
    states = _mix64((seed_state ^ np.asarray(indices, np.uint64)) + np.uint64(_GOLDEN_GAMMA))  # [B]
    steps = (np.arange(1, count + 1, dtype=np.uint64) * np.uint64(_GOLDEN_GAMMA))[None, :]  # [1, count]
    return _mix64(states[:, None] + steps)  # [B, count]


def mask_records(
    seed: int,
    indices: np.ndarray,
    tokens: np.ndarray,
    special: SpecialIds,
    vocab_size: int,
    *,
    predict_fraction: float = 0.25,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Masks `tokens` [B, S] (see `apply_masking`); row b's randomness is a function of (seed, indices[b]).

    The loader passes each row's global record index, so the masks do not depend on the batch size, the
    host count or where iteration resumed. Vectorised over the batch: no Generator per row.
    """
    tokens = np.asarray(tokens)
    seq_len = tokens.shape[-1]
    p, _, _ = predicted_counts(seq_len, predict_fraction, mask_fraction, random_fraction)
    stream = record_stream(seed, indices, seq_len + p)  # [B, S + P]
    order_keys = (stream[:, :seq_len] >> np.uint64(11)) * 2.0**-53  # [B, S], 53-bit uniforms in [0, 1)
    # 64-bit draws modulo V - 7: the bias is below V / 2**64, far under any measurable effect.
    draws = stream[:, seq_len:] % np.uint64(vocab_size - len(special.all()))  # [B, P]
    fractions = dict(
        predict_fraction=predict_fraction, mask_fraction=mask_fraction, random_fraction=random_fraction
    )
    return apply_masking(tokens, order_keys, draws, special, vocab_size, **fractions)
