"""Inference helpers on a MaskedLM (converted from the original checkpoint or trained here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from ufbert_jax.data.tokenizer import SpecialIds, encode_texts
from ufbert_jax.model import MaskedLM


def fill_mask(
    model: MaskedLM, tokenizer: Tokenizer, text: str, top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """The top_k (token, probability) predictions for every <mask> of `text`, in order of appearance.

    The text is encoded in the original's single-sequence layout "A <sep>" (cut to the model's max_len);
    probabilities are a softmax over the tokenizer's vocabulary. Put the model in eval mode
    first (`from_pretrained` does), or dropout makes the predictions random.
    """
    vocab = tokenizer.get_vocab_size()
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k={top_k} must be in [1, {vocab}] (the tokenizer's vocabulary)")
    mask_id = SpecialIds.of(tokenizer).mask
    ids = encode_texts(tokenizer, ([text],), model.cfg.max_len)[0]  # [S]
    positions = np.flatnonzero(ids == mask_id)  # [M]
    if positions.size == 0:
        raise ValueError(f"{text!r} has no mask token {tokenizer.id_to_token(mask_id)!r}")
    logits = model(jnp.asarray(ids)[None])[0, positions, :vocab]  # [M, vocab]
    probs, top = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), top_k)  # [M, top_k] each
    return [
        [(tokenizer.id_to_token(int(i)), float(p)) for i, p in zip(row_ids, row_probs, strict=True)]
        for row_ids, row_probs in zip(np.asarray(top), np.asarray(probs), strict=True)
    ]
