"""The jit-compiled inference API on a converted original-format checkpoint (the tiny fixture of
tests/test_original_format.py: 3 trees of depth 2, max_len 16) against the model called directly."""

import jax
import numpy as np
import pytest

from tests.helpers import tokens_and_mask
from tests.test_original_format import original_state_dict, small_arch, write_original
from ufbert_jax import inference, original_format
from ufbert_jax.data.tokenizer import SpecialIds, encode_texts


@pytest.fixture
def converted(tmp_path, rng):
    """(MaskedLM, tokenizer) converted from a synthetic original-format FFF directory."""
    arch = small_arch("fff-3x2")
    return original_format.from_pretrained(
        write_original(tmp_path / "original", arch, original_state_dict(arch, rng))
    )


def test_encode_is_the_encoder(converted, rng):
    mlm, _ = converted
    ids, mask = tokens_and_mask(rng, mlm.cfg)
    hidden = inference.encode(mlm, ids, mask)
    assert hidden.shape == (*ids.shape, mlm.cfg.hidden)
    np.testing.assert_allclose(hidden, mlm.encoder(ids, mask), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(mlm.decode(hidden), mlm(ids, mask), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(inference.encode(mlm.encoder, ids), mlm.encoder(ids), atol=1e-5, rtol=1e-5)


def test_token_ids_are_checked_against_the_vocabulary(converted):
    mlm, _ = converted
    vocab = mlm.cfg.vocab_size
    ids = np.ones((2, 5), np.int64)
    ids[1, 3] = vocab
    with pytest.raises(
        ValueError, match=rf"token id {vocab} at \[1, 3\] is outside the vocabulary \[0, {vocab}\)"
    ):
        inference.encode(mlm, ids)
    ids[1, 3], ids[0, 0] = 0, -1
    with pytest.raises(ValueError, match=r"token id -1 at \[0, 0\]"):
        inference.encode(mlm, ids)
    with pytest.raises(TypeError, match="token_ids must be integers; got dtype float32"):
        inference.encode(mlm, np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"attention_mask shape \(1, 2\) != token_ids shape \(1, 3\)"):
        inference.encode(mlm, np.ones((1, 3), np.int32), np.ones((1, 2)))
    with pytest.raises(TypeError, match="expected an Encoder or a MaskedLM; got str"):
        inference.encode("model", np.ones((1, 3), np.int32))


def direct_predictions(mlm, tokenizer, text):
    """Softmax over the tokenizer's vocabulary at each mask of `text`, alone and unpadded: [M, vocab]."""
    ids = encode_texts(tokenizer, ([text],), mlm.cfg.max_len)[0]
    positions = np.flatnonzero(ids == SpecialIds.of(tokenizer).mask)
    logits = np.asarray(mlm(ids[None]))[0, positions, : tokenizer.get_vocab_size()]
    return np.asarray(jax.nn.softmax(logits, axis=-1))


def test_fill_mask_batch_matches_each_text_alone_and_compiles_a_few_shapes(converted, rng):
    mlm, tokenizer = converted
    words = [w for w in tokenizer.get_vocab() if not w.startswith(("<", "#"))]
    texts = []
    for _ in range(11):  # lengths 2..20 words: both buckets (8, 16) and cut texts, their masks kept
        text = list(rng.choice(words, int(rng.integers(2, 21))))
        for position in rng.choice(min(len(text), 12), int(rng.integers(1, 3)), replace=False):
            text[position] = "<mask>"
        texts.append(" ".join(text))
    texts.append("no mask here")
    before = inference._top_k_at._cache_size()
    got = inference.fill_mask_batch(mlm, tokenizer, texts, top_k=3, batch_size=4, buckets=(8,))
    assert inference._top_k_at._cache_size() - before <= 2 * 2  # buckets (8, 16) x mask slots (8, 16)
    assert got[-1] == []
    for text, predictions in zip(texts[:-1], got[:-1], strict=True):
        expected = direct_predictions(mlm, tokenizer, text)
        ids = encode_texts(tokenizer, ([text],), mlm.cfg.max_len)[0]
        assert len(predictions) == len(expected) == np.sum(ids == tokenizer.token_to_id("<mask>"))
        for prediction, probs in zip(predictions, expected, strict=True):
            # Near-ties may swap places: compare the probabilities, of the predicted tokens and as a ranking.
            np.testing.assert_allclose([p for _, p in prediction], np.sort(probs)[::-1][:3], rtol=1e-4)
            np.testing.assert_allclose(
                [probs[tokenizer.token_to_id(t)] for t, _ in prediction],
                [p for _, p in prediction],
                rtol=1e-4,
            )


def test_fill_mask_batch_arguments(converted):
    mlm, tokenizer = converted
    assert inference.fill_mask_batch(mlm, tokenizer, []) == []
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        inference.fill_mask_batch(mlm, tokenizer, ["a <mask>"], batch_size=0)
    with pytest.raises(ValueError, match=r"top_k=0 must be in \[1, "):
        inference.fill_mask_batch(mlm, tokenizer, ["a <mask>"], top_k=0)


def test_fill_mask_refuses_a_string_for_a_list_and_names_a_mask_cut_off(converted):
    mlm, tokenizer = converted
    with pytest.raises(TypeError, match=r"texts must be a sequence of str, not one str"):
        inference.fill_mask_batch(mlm, tokenizer, "a <mask>")
    long_text = " ".join(["the"] * 40 + ["<mask>"])  # the mask lies beyond max_len = 16
    with pytest.raises(ValueError, match=r"cut off by truncation to the model's max_len=16"):
        inference.fill_mask(mlm, tokenizer, long_text)
    with pytest.raises(ValueError, match=r"text 1 .*cut off by truncation to the model's max_len=16"):
        inference.fill_mask_batch(mlm, tokenizer, ["a <mask>", long_text])
    with pytest.raises(ValueError, match="has no mask token '<mask>'"):
        inference.fill_mask(mlm, tokenizer, "the the the")
