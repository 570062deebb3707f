"""Jit-compiled inference on an Encoder or a MaskedLM (converted from the original checkpoint or trained).

Shape legend: B batch, S sequence, H hidden, V vocabulary, M masked positions.

- ``encode(model, token_ids, attention_mask)``: the final hidden states [B, S, H].
- ``fill_mask_batch(model, tokenizer, texts)``: top-k predictions for every <mask> of many texts. Texts are
  padded to the smallest of a few bucket lengths and batches to a fixed size, so a whole run compiles at
  most one program per bucket (and per bucket of mask counts).
- ``fill_mask(model, tokenizer, text)``: the same for one text.

Token ids are checked on the host against the model's vocabulary before anything is compiled (under jit an
id out of range would give NaN outputs, ufbert_jax.lookup). Both run the model with dropout off whatever
mode it is in (a copy inside the compiled function is switched to eval mode; the model passed in is left as
it is); `ufbert_jax.from_pretrained` returns models in eval mode already.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from ufbert_jax import lookup
from ufbert_jax.data import bucketing
from ufbert_jax.data.tokenizer import SpecialIds, encode_texts
from ufbert_jax.model import Encoder, MaskedLM

#: Default sequence-length buckets of fill_mask_batch (the model's max_len is always the last one).
BUCKETS = (32, 64, 128)
#: Masked positions per batch are padded to a power of two of at least this many.
MIN_MASK_SLOTS = 8


def check_token_ids(token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """token_ids [B, S] integers in [0, vocab_size) -> the same as int32; else a ValueError naming the id."""
    ids = np.asarray(token_ids)
    if ids.ndim != 2:
        raise ValueError(f"token_ids must be [B, S]; got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"token_ids must be integers; got dtype {ids.dtype}")
    lookup.check_ids(ids, vocab_size)
    return ids.astype(np.int32)


def _encoder_of(model: Encoder | MaskedLM) -> Encoder:
    if isinstance(model, MaskedLM):
        return model.encoder
    if isinstance(model, Encoder):
        return model
    raise TypeError(f"expected an Encoder or a MaskedLM; got {type(model).__name__}")


def _eval_mode(graphdef: nnx.GraphDef, state: nnx.State) -> nnx.Module:
    """The module of (graphdef, state), dropout off: a fresh object, so the caller's model keeps its mode."""
    module = nnx.merge(graphdef, state)
    module.eval()
    return module


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, token_ids, attention_mask) -> jax.Array:
    """token_ids, attention_mask [B, S] -> hidden [B, S, H]."""
    return _eval_mode(graphdef, state)(token_ids, attention_mask)


def encode(
    model: Encoder | MaskedLM, token_ids: np.ndarray, attention_mask: np.ndarray | None = None
) -> jax.Array:
    """Final hidden states [B, S, H] of token_ids [B, S] (attention_mask [B, S], 1 keep / 0 pad; None:
    every position kept), compiled once per shape."""
    encoder = _encoder_of(model)
    ids = check_token_ids(token_ids, encoder.cfg.vocab_size)
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != token_ids shape {ids.shape}")
    graphdef, state = nnx.split(encoder)
    return _encode(graphdef, state, ids, mask)


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _top_k_at(graphdef, state, token_ids, attention_mask, rows, cols, vocab: int, top_k: int):
    """Top-k softmax predictions at positions (rows[m], cols[m]), over the first `vocab` logits.

    token_ids, attention_mask [B, S]; rows, cols [M] -> (probs [M, top_k] float32, ids [M, top_k] int32).
    """
    mlm = _eval_mode(graphdef, state)
    hidden = mlm.encoder(token_ids, attention_mask)[rows, cols]  # [M, H]: decode only the masked positions
    logits = mlm.decode(hidden)[:, :vocab]  # [M, vocab]
    return jax.lax.top_k(jax.nn.softmax(logits, axis=-1), top_k)


def _check_no_mask_cut_off(
    tokenizer: Tokenizer, texts: list[str], encoded: list[np.ndarray], mask_id: int, max_len: int
) -> None:
    """A ValueError naming the first text whose encoding, cut to max_len, lost one of its masks."""
    full = [i for i, ids in enumerate(encoded) if len(ids) == max_len]  # only these may have been cut
    encodings = tokenizer.encode_batch([texts[i] for i in full], add_special_tokens=False) if full else []
    for i, encoding in zip(full, encodings, strict=True):
        masks = encoding.ids.count(mask_id)
        kept = int(np.sum(encoded[i] == mask_id))
        if kept < masks:
            raise ValueError(
                f"text {i} ({texts[i][:40]!r}...): {masks - kept} of its {masks} mask tokens are cut off by "
                f"truncation to the model's max_len={max_len} tokens; shorten the text before the mask"
            )


def fill_mask_batch(
    model: MaskedLM,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    top_k: int = 5,
    batch_size: int = 32,
    buckets: Sequence[int] = BUCKETS,
) -> list[list[list[tuple[str, float]]]]:
    """For every text, the top_k (token, probability) predictions of each of its <mask>s, in order.

    Each text is encoded in the original's single-sequence layout "A <sep>" (cut to the model's max_len)
    and padded to the smallest bucket length that holds it; texts of one bucket run in batches of
    `batch_size` (the last one padded with empty rows; ufbert_jax.data.bucketing), so at most one program
    per bucket is compiled for
    the sequences, times the few power-of-two numbers of masked positions. A text without a mask gets [].
    Probabilities are a softmax over the tokenizer's vocabulary. A TypeError when `texts` is one str (it
    would be read as a list of characters); a ValueError naming the text when truncation to max_len cuts
    off one of its masks (its predictions would no longer match its masks one to one).
    """
    if isinstance(texts, str):
        raise TypeError(
            f"texts must be a sequence of str, not one str ({texts[:40]!r}); pass [text] or use fill_mask"
        )
    texts = list(texts)
    vocab = tokenizer.get_vocab_size()
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k={top_k} must be in [1, {vocab}] (the tokenizer's vocabulary)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    lengths = bucketing.bucket_lengths(buckets, model.cfg.max_len)
    special = SpecialIds.of(tokenizer)
    encoded = encode_texts(tokenizer, (texts,), model.cfg.max_len) if texts else []
    _check_no_mask_cut_off(tokenizer, texts, encoded, special.mask, model.cfg.max_len)
    graphdef, state = nnx.split(model)
    results: list[list[list[tuple[str, float]]]] = [[] for _ in texts]
    for batch in bucketing.batches(encoded, batch_size, lengths, special.pad):
        ids, mask = batch.token_ids, batch.attention_mask  # [B, S] each
        rows, cols = np.nonzero((ids == special.mask) & (mask == 1))  # [M] each, row-major order
        if rows.size == 0:
            continue
        slots = max(MIN_MASK_SLOTS, 1 << int(rows.size - 1).bit_length())
        pad = slots - rows.size
        probs, top = _top_k_at(
            graphdef,
            state,
            check_token_ids(ids, model.cfg.vocab_size),
            mask,
            np.pad(rows, (0, pad)).astype(np.int32),
            np.pad(cols, (0, pad)).astype(np.int32),
            vocab,
            top_k,
        )
        probs, top = np.asarray(probs), np.asarray(top)
        for m, row in enumerate(rows):
            results[batch.index[row]].append(
                [(tokenizer.id_to_token(int(i)), float(p)) for i, p in zip(top[m], probs[m], strict=True)]
            )
    return results


def fill_mask(
    model: MaskedLM, tokenizer: Tokenizer, text: str, top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """The top_k (token, probability) predictions for every <mask> of `text`, in order of appearance.

    fill_mask_batch for one text (one bucket, batch of one); a text without a mask is a ValueError.
    """
    predictions = fill_mask_batch(model, tokenizer, [text], top_k=top_k, batch_size=1)[0]
    if not predictions:
        mask_id = SpecialIds.of(tokenizer).mask
        raise ValueError(f"{text!r} has no mask token {tokenizer.id_to_token(mask_id)!r}")
    return predictions
