"""Deterministic, resumable MLM batches from token shards, built with grain.

The pipeline is one global record stream that every host indexes the same way:

    rows[start:stop] --shuffle(seed, reshuffled each epoch)--> repeat(num_epochs) --> (stream index t, row)
         --[shard_index::shard_count]--> batch(B) --> mask_records(seed, t, rows)

so host k of n takes stream positions k, k + n, ...; hosts see disjoint rows within an epoch, and row t's
masks depend only on (seed, t): the same for any batch size, host count or worker count, and after a
resume. The iterator's `get_state()` is a small JSON-serialisable dict (the next batch index); restoring
it with `set_state` into an iterator built with the same arguments continues exactly where it stopped.

Shapes: B batch (per host), S sequence, P predicted positions.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import grain
import numpy as np
from absl import flags

from ufbert_jax.data.masking import mask_records
from ufbert_jax.data.shards import TokenShards
from ufbert_jax.data.tokenizer import SpecialIds

# A vectorised batch masks in ~2 ms, so a few threads and a short queue keep up with any accelerator step;
# grain's defaults (16 threads, 500 batches ahead) would mostly burn shared CPU on batches never used.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)


def _with_index(index: int, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.int64(index), row


def _mask_batch(
    seed: int, special: SpecialIds, vocab_size: int, batch: tuple[np.ndarray, np.ndarray]
) -> dict[str, np.ndarray]:
    indices, tokens = batch  # [B], [B, S]
    return mask_records(seed, indices, tokens, special, vocab_size)


def mlm_dataset(
    shard_dir: str | Path,
    *,
    batch_size: int,
    seed: int,
    special: SpecialIds,
    vocab_size: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    rows: tuple[int, int] | None = None,
) -> grain.MapDataset:
    """The batches of this host as a grain MapDataset (random access by batch index); see the module doc.

    `num_epochs=None` repeats forever. With a finite count the stream is cut to a multiple of
    shard_count * batch_size so every host yields the same number of full batches. `rows` = (start, stop):
    only the stored rows start .. stop-1 (default all), e.g. to keep a held-out tail out of training.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"{seed=} must be in [0, 2**32) (grain's shuffle seed)")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"{shard_index=} must be in [0, {shard_count=})")
    if batch_size < 1:
        raise ValueError(f"{batch_size=} must be >= 1")
    ds = grain.MapDataset.source(TokenShards(shard_dir))
    if rows is not None:
        start, stop = rows
        if not 0 <= start < stop <= len(ds):
            raise ValueError(f"{rows=} must be a non-empty range of the {len(ds)} rows in {shard_dir}")
        ds = ds[start:stop]
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    ds = ds.map_with_index(_with_index)
    if len(ds) < sys.maxsize:
        per_step = shard_count * batch_size
        ds = ds[: len(ds) // per_step * per_step]
    ds = ds[shard_index::shard_count].batch(batch_size, drop_remainder=True)
    return ds.map(functools.partial(_mask_batch, seed, special, vocab_size))


def mlm_batches(
    shard_dir: str | Path,
    *,
    batch_size: int,
    seed: int,
    special: SpecialIds,
    vocab_size: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    rows: tuple[int, int] | None = None,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """An iterator of {"input_ids" [B, S], "positions" [B, P], "labels" [B, P]} int32 numpy batches.

    For multi-host training pass shard_index=jax.process_index(), shard_count=jax.process_count() and the
    per-host batch size. `worker_count` > 0 masks in that many grain worker processes (same batches).
    Checkpoint `it.get_state()` and resume with `it.set_state(state)` on an iterator made with the same
    arguments (worker_count may differ only if it stays 0 or > 0: the two state formats differ).
    """
    ds = mlm_dataset(
        shard_dir,
        batch_size=batch_size,
        seed=seed,
        special=special,
        vocab_size=vocab_size,
        shard_index=shard_index,
        shard_count=shard_count,
        num_epochs=num_epochs,
        rows=rows,
    ).to_iter_dataset(READ_OPTIONS)
    if worker_count > 0:
        # grain 0.2.18's mp_prefetch reads an absl flag (grain_enable_multiprocess_worker_profiling) when jax
        # is loaded, which raises in programs that never parsed absl flags; defaults are what we want.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(ds)
