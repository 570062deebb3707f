"""MLM masking: exact 32 positions with a 26/3/3 split, specials never chosen, uniform, deterministic."""

import numpy as np
import pytest
from scipy import stats

from ufbert_jax.data.masking import IGNORED_LABEL, mask_records, mask_sequences, predicted_counts
from ufbert_jax.data.tokenizer import SpecialIds

V, S = 1000, 128


@pytest.fixture
def special(rng) -> SpecialIds:
    """Special ids scattered over the vocabulary: nothing may assume they are 0..6."""
    return SpecialIds(*(int(i) for i in rng.choice(V, size=7, replace=False)))


def random_tokens(rng, special, batch=256, special_fraction=0.1) -> np.ndarray:
    specials = np.array(sorted(special.all()))
    non_special = np.setdiff1d(np.arange(V), specials)
    tokens = rng.choice(non_special, size=(batch, S))
    sprinkle = rng.random((batch, S)) < special_fraction
    tokens[sprinkle] = rng.choice(specials, size=sprinkle.sum())
    return tokens


def both_maskers(seed, tokens, special):
    yield mask_sequences(seed, tokens, special, V)
    yield mask_records(seed, np.arange(len(tokens)) * 7 + 3, tokens, special, V)


def test_counts_of_the_recipe():
    assert predicted_counts(128, 0.25, 0.8, 0.1) == (32, 26, 3)
    assert predicted_counts(512, 0.25, 0.8, 0.1) == (128, 102, 13)


def test_exact_positions_split_and_labels(rng, special):
    tokens = random_tokens(rng, special)
    specials = np.array(sorted(special.all()))
    for out in both_maskers(int(rng.integers(2**31)), tokens, special):
        ids, pos, labels = out["input_ids"], out["positions"], out["labels"]
        assert ids.shape == tokens.shape and pos.shape == labels.shape == (len(tokens), 32)
        assert ids.dtype == pos.dtype == labels.dtype == np.int32
        assert (np.diff(pos, axis=1) > 0).all()  # distinct and ascending
        np.testing.assert_array_equal(labels, np.take_along_axis(tokens, pos, axis=1))
        assert not np.isin(labels, specials).any()
        # Everything off the predicted positions is untouched.
        untouched = np.ones_like(tokens, bool)
        np.put_along_axis(untouched, pos, False, axis=1)
        np.testing.assert_array_equal(ids[untouched], tokens[untouched])
        at = np.take_along_axis(ids, pos, axis=1)
        masked, unchanged = at == special.mask, at == labels
        replaced = ~masked & ~unchanged
        assert (masked.sum(1) == 26).all()
        # 3 random + 3 unchanged, but a random draw may hit the original id (p = 1/993 per draw).
        assert (replaced.sum(1) <= 3).all() and (unchanged.sum(1) == 6 - replaced.sum(1)).all()
        assert replaced.sum() >= 3 * len(tokens) - 12
        assert (
            not np.isin(at[replaced], specials).any()
            and (0 <= at[replaced]).all()
            and (at[replaced] < V).all()
        )
        assert len(np.unique(at[replaced])) > 100  # random ids spread over the vocabulary


def test_rows_short_of_eligible_tokens(special):
    tokens = np.full((2, S), special.pad)
    eligible_at = np.array([3, 50, 51, 90, 127])
    non_special = [t for t in range(V) if t not in special.all()]
    tokens[0, eligible_at] = non_special[:5]
    tokens[1] = non_special[:S]
    for out in both_maskers(5, tokens, special):
        np.testing.assert_array_equal(out["positions"][0, :5], eligible_at)
        np.testing.assert_array_equal(out["labels"][0, :5], tokens[0, eligible_at])
        assert (out["labels"][0, 5:] == IGNORED_LABEL).all()
        assert not np.isin(out["positions"][0, 5:], eligible_at).any()  # padding points at special tokens
        assert (out["input_ids"][0, eligible_at] == special.mask).all()  # 5 < 26: all masked
        np.testing.assert_array_equal(
            np.delete(out["input_ids"][0], eligible_at), np.delete(tokens[0], eligible_at)
        )
        assert (out["labels"][1] >= 0).all()


def test_deterministic_in_the_seed(rng, special):
    tokens = random_tokens(rng, special, batch=8)
    a, b, c = (mask_sequences(seed, tokens, special, V) for seed in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["positions"], c["positions"])
    from_generator = mask_sequences(np.random.default_rng(1), tokens, special, V)
    assert all(np.array_equal(a[k], from_generator[k]) for k in a)


def test_jax_key_seeds_numpy(rng, special):
    jax = pytest.importorskip("jax")
    tokens = random_tokens(rng, special, batch=4)
    a = mask_sequences(jax.random.PRNGKey(7), tokens, special, V)
    b = mask_sequences(jax.random.key_data(jax.random.key(7)), tokens, special, V)
    c = mask_sequences(jax.random.PRNGKey(8), tokens, special, V)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["positions"], c["positions"])


def test_records_depend_only_on_seed_and_index(rng, special):
    tokens = random_tokens(rng, special, batch=12)
    indices = rng.integers(0, 2**62, size=12)  # global stream positions, anywhere in the stream
    whole = mask_records(3, indices, tokens, special, V)
    for part in (slice(0, 5), slice(5, 12), slice(7, 8)):
        piece = mask_records(3, indices[part], tokens[part], special, V)
        assert all(np.array_equal(whole[k][part], piece[k]) for k in whole)
    other_seed = mask_records(4, indices, tokens, special, V)
    other_index = mask_records(3, indices + 1, tokens, special, V)
    assert not np.array_equal(whole["positions"], other_seed["positions"])
    assert not np.array_equal(whole["positions"], other_index["positions"])


@pytest.mark.parametrize("masker", ["sequences", "records"])
def test_positions_and_treatments_uniform_over_eligible(masker):
    # A statistical test rejects a fair draw with probability 1e-4 for a random seed: this one draws from a
    # fixed seed, so it passes (or fails) the same way on every run.
    rng = np.random.default_rng(20240611)
    special = SpecialIds(*(int(i) for i in rng.choice(V, size=7, replace=False)))
    batch = 3000
    tokens = random_tokens(rng, special, batch=1, special_fraction=0.0).repeat(batch, axis=0)
    tokens[:, ::8] = special.sep  # the same 16 ineligible positions in every row: 112 eligible
    # One fixed masking seed: a chi-square test at p > 1e-4 rejects 1 in 10^4 seeds by design, so a
    # drawn seed would make this test fail by chance.
    seed = 20261201
    if masker == "sequences":
        out = mask_sequences(seed, tokens, special, V)
    else:
        out = mask_records(seed, np.arange(batch), tokens, special, V)
    eligible = np.flatnonzero(tokens[0] != special.sep)
    at = np.take_along_axis(out["input_ids"], out["positions"], axis=1)
    picked = np.bincount(out["positions"].ravel(), minlength=S)
    masked = np.bincount(out["positions"][at == special.mask], minlength=S)
    assert picked[::8].sum() == 0
    for counts, per_row in ((picked, 32), (masked, 26)):
        expected = np.full(len(eligible), batch * per_row / len(eligible))
        # Positions in a row are drawn without replacement: the counts are less spread than multinomial,
        # so the plain chi-square test is conservative here (it can only under-reject).
        assert stats.chisquare(counts[eligible], expected).pvalue > 1e-4


def test_bad_inputs_are_named(special):
    with pytest.raises(ValueError, match=r"tokens.shape=\(128,\)"):
        mask_sequences(0, np.zeros(S, int), special, V)
    with pytest.raises(ValueError, match=r"span \[0, 1000\]"):
        mask_sequences(0, np.eye(1, S, dtype=int) * V, special, V)
