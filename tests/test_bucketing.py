"""Length-bucketed, padded batches (GLUE fine-tuning and fill-mask share them)."""

import numpy as np

from ufbert_jax.data import bucketing


def test_bucketing_uses_few_shapes_and_covers_every_example_once(rng):
    lengths = bucketing.bucket_lengths((32, 64, 200), max_len=128)
    assert lengths == (32, 64, 128)
    sequences = [rng.integers(7, 100, size=int(n)).astype(np.int32) for n in rng.integers(1, 129, size=333)]
    batches = list(bucketing.batches(sequences, 16, lengths, pad_id=0, rng=rng))
    assert {b.token_ids.shape for b in batches} <= {(16, 32), (16, 64), (16, 128)}
    assert len(batches) == bucketing.num_batches(sequences, 16, lengths)
    seen = np.concatenate([b.index[b.real] for b in batches])
    assert sorted(seen.tolist()) == list(range(333))
    for b in batches:
        for row, i in enumerate(b.index):
            n = len(sequences[i]) if i >= 0 else 0
            assert b.attention_mask[row].sum() == n and b.real[row] == (i >= 0)
            if i >= 0:
                assert b.token_ids.shape[1] == min(length for length in lengths if length >= n)
                assert b.token_ids[row, :n].tolist() == sequences[i].tolist()
                assert not b.token_ids[row, n:].any()
