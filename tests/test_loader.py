"""The grain MLM loader: per-epoch shuffling, host sharding, batch-size independence, exact resume."""

import itertools
import json

import numpy as np
import pytest

from ufbert_jax.data.loader import mlm_batches
from ufbert_jax.data.shards import TokenShards, prepare_shards
from ufbert_jax.data.tokenizer import SpecialIds, load_tokenizer

SEQ = 32  # P = 8: 6 masked, 1 random, 1 unchanged
WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)  # a fixed corpus: the tests below draw their own randomness
    docs = [" ".join(rng.choice(WORDS, size=rng.integers(5, 60))) for _ in range(120)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    return prepare_shards([str(root / "corpus.txt")], root / "shards", root / "tok.json", seq_len=SEQ,
                          vocab_size=150, num_workers=1)  # fmt: skip


@pytest.fixture(scope="module")
def rows(shard_dir) -> np.ndarray:
    shards = TokenShards(shard_dir)
    return np.stack([shards[i] for i in range(len(shards))])  # [N, S]


def loader(shard_dir, **kw):
    special = SpecialIds.of(load_tokenizer(shard_dir / "tokenizer.json"))
    args = dict(batch_size=4, seed=11, special=special, vocab_size=TokenShards(shard_dir).vocab_size)
    return mlm_batches(shard_dir, **(args | kw))


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def originals(batch) -> np.ndarray:
    """The unmasked rows of a batch: the labels put back at their positions. [B, S]"""
    tokens = batch["input_ids"].copy()
    valid = batch["labels"] >= 0
    rows = np.broadcast_to(np.arange(len(tokens))[:, None], valid.shape)
    tokens[rows[valid], batch["positions"][valid]] = batch["labels"][valid]
    return tokens


def row_ids(batches, rows) -> list[int]:
    """Which stored row each batch row is (the rows of this corpus are all distinct)."""
    lookup = {r.tobytes(): i for i, r in enumerate(rows)}
    assert len(lookup) == len(rows)
    return [lookup[r.tobytes()] for b in batches for r in originals(b)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys() == {"input_ids", "positions", "labels"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_structure(shard_dir):
    batch = next(loader(shard_dir))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "input_ids": ((4, SEQ), np.int32),
        "positions": ((4, 8), np.int32),
        "labels": ((4, 8), np.int32),
    }


def test_one_epoch_is_a_permutation_and_epochs_differ(shard_dir, rows):
    n = len(rows)
    ids = row_ids(take(loader(shard_dir, batch_size=1, num_epochs=2), 2 * n), rows)
    assert sorted(ids[:n]) == sorted(ids[n:]) == list(range(n))
    assert ids[:n] != ids[n:] and ids[:n] != list(range(n))


def test_finite_epochs_end_with_full_batches(shard_dir, rows):
    batches = list(loader(shard_dir, batch_size=5, num_epochs=3))
    assert len(batches) == 3 * len(rows) // 5
    assert all(len(b["input_ids"]) == 5 for b in batches)


def test_deterministic_and_seeded(shard_dir):
    assert_same(take(loader(shard_dir), 6), take(loader(shard_dir), 6))
    other = take(loader(shard_dir, seed=12), 6)
    assert not np.array_equal(
        np.stack([b["input_ids"] for b in other]),
        np.stack([b["input_ids"] for b in take(loader(shard_dir), 6)]),
    )


def test_batch_size_does_not_change_the_stream(shard_dir):
    small = take(loader(shard_dir, batch_size=2), 12)
    large = take(loader(shard_dir, batch_size=6), 4)
    joined = [
        {k: np.concatenate([b[k] for b in small[i : i + 3]]) for k in small[0]} for i in range(0, 12, 3)
    ]
    assert_same(joined, large)


def test_resume_from_json_state(shard_dir):
    it = loader(shard_dir)
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 7)
    fresh = loader(shard_dir)
    fresh.set_state(state)
    assert_same(take(fresh, 7), expected)


def test_resume_across_an_epoch_boundary(shard_dir, rows):
    per_epoch = len(rows) // 4
    it = loader(shard_dir, num_epochs=3)
    take(it, per_epoch - 1)
    state = it.get_state()
    expected = take(it, 3)
    fresh = loader(shard_dir, num_epochs=3)
    fresh.set_state(state)
    assert_same(take(fresh, 3), expected)


def test_hosts_are_disjoint_and_cover_the_epoch(shard_dir, rows):
    per_host = [
        row_ids(list(loader(shard_dir, num_epochs=1, shard_index=k, shard_count=3)), rows) for k in range(3)
    ]
    assert len({len(ids) for ids in per_host}) == 1  # equal batch counts keep hosts in lockstep
    union = [i for ids in per_host for i in ids]
    assert len(set(union)) == len(union) == len(rows) // 12 * 12


def test_hosts_interleave_the_single_host_stream(shard_dir):
    single = take(loader(shard_dir, batch_size=1), 6)
    host = [take(loader(shard_dir, batch_size=1, shard_index=k, shard_count=2), 3) for k in range(2)]
    assert_same([host[i % 2][i // 2] for i in range(6)], single)  # same rows and the same masks


def test_a_row_range_is_all_the_stream_draws_from(shard_dir, rows, rng):
    n = len(rows)
    start, stop = sorted(rng.choice(np.arange(1, n), size=2, replace=False))  # 0 < start < stop < n
    ids = row_ids(loader(shard_dir, batch_size=1, num_epochs=1, rows=(start, stop)), rows)
    assert sorted(ids) == list(range(start, stop))
    train = set(row_ids(take(loader(shard_dir, batch_size=1, rows=(0, start)), 3 * start), rows))
    assert train == set(range(start))  # the tail never appears, however long the stream runs


def test_bad_arguments_are_named(shard_dir, tmp_path):
    with pytest.raises(ValueError, match="shard_index=2"):
        loader(shard_dir, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="seed=-1"):
        loader(shard_dir, seed=-1)
    with pytest.raises(FileNotFoundError, match="no_shards_here"):
        loader(tmp_path / "no_shards_here")
    for bad in [(5, 5), (-1, 3), (0, 10**6)]:
        with pytest.raises(ValueError, match="must be a non-empty range"):
            loader(shard_dir, rows=bad)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume(shard_dir):
    it = loader(shard_dir, worker_count=2)
    first = take(it, 4)
    state = json.loads(json.dumps(it.get_state()))
    rest = take(it, 3)
    it.close()
    assert_same(first + rest, take(loader(shard_dir), 7))
    fresh = loader(shard_dir, worker_count=2)
    fresh.set_state(state)
    resumed = take(fresh, 3)
    fresh.close()
    assert_same(resumed, rest)
