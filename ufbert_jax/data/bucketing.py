"""Token sequences as length-bucketed, padded batches: the batching of GLUE fine-tuning and of fill-mask.

Shape legend: B batch, S padded sequence length (one of the bucket lengths).

Each sequence is padded to the smallest bucket length that holds it (e.g. 32, 64 or 128) and every batch to
exactly B rows (padding rows have index -1 and an all-zero attention mask), so a jitted step sees at most
one shape per bucket instead of one per batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np


def bucket_lengths(buckets: Sequence[int], max_len: int) -> tuple[int, ...]:
    """The padded lengths in use: the given ones below `max_len`, then `max_len` itself (always last)."""
    if any(b < 1 for b in buckets):
        raise ValueError(f"bucket lengths {tuple(buckets)} must be >= 1")
    return (*sorted({b for b in buckets if b < max_len}), max_len)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One padded batch. token_ids, attention_mask [B, S] int32 (mask 1 on tokens, 0 on padding); index [B]
    int64 the positions of the rows' sequences in the input (-1 on padding rows)."""

    token_ids: np.ndarray
    attention_mask: np.ndarray
    index: np.ndarray

    @property
    def real(self) -> np.ndarray:
        """[B] bool: the rows that hold a sequence."""
        return self.index >= 0


def _pad_batch(sequences: Sequence[np.ndarray], rows: np.ndarray, batch_size: int, length: int, pad_id: int):
    token_ids = np.full((batch_size, length), pad_id, np.int32)
    attention_mask = np.zeros((batch_size, length), np.int32)
    for r, i in enumerate(rows):
        token_ids[r, : len(sequences[i])] = sequences[i]
        attention_mask[r, : len(sequences[i])] = 1
    index = np.full(batch_size, -1, np.int64)
    index[: len(rows)] = rows
    return Batch(token_ids, attention_mask, index)


def batches(
    sequences: Sequence[np.ndarray],
    batch_size: int,
    lengths: tuple[int, ...],
    pad_id: int,
    rng: np.random.Generator | None = None,
) -> Iterator[Batch]:
    """Length-bucketed batches covering every sequence once.

    With `rng` (training) sequences are shuffled within their bucket and the batches of all buckets are
    shuffled together; without it (evaluation, inference) the order is deterministic, bucket by bucket and
    in input order within a bucket. `lengths` come from `bucket_lengths`; a sequence longer than the last
    one is a ValueError.
    """
    sizes = np.asarray([len(s) for s in sequences], np.int64)
    if len(sizes) and sizes.max() > lengths[-1]:
        raise ValueError(f"a sequence has {sizes.max()} tokens, more than the largest bucket {lengths[-1]}")
    bucket_of = np.searchsorted(np.asarray(lengths), sizes)  # smallest bucket length >= size
    plan = []
    for b, length in enumerate(lengths):
        members = np.flatnonzero(bucket_of == b)
        if rng is not None:
            members = rng.permutation(members)
        plan += [(members[i : i + batch_size], length) for i in range(0, len(members), batch_size)]
    order = rng.permutation(len(plan)) if rng is not None else range(len(plan))
    for k in order:
        rows, length = plan[k]
        yield _pad_batch(sequences, rows, batch_size, length, pad_id)


def num_batches(sequences: Sequence[np.ndarray], batch_size: int, lengths: tuple[int, ...]) -> int:
    """How many batches `batches` yields for these sequences (the same for every shuffle)."""
    bucket_of = np.searchsorted(np.asarray(lengths), [len(s) for s in sequences])
    counts = np.bincount(bucket_of, minlength=len(lengths))
    return int(sum(-(-c // batch_size) for c in counts))
