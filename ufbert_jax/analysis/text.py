"""A text file as rows of token ids, packed as in pretraining (documents each followed by <sep>).

Shape legend: R rows, S sequence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ufbert_jax.data.corpus import file_documents
from ufbert_jax.data.shards import encode_documents
from ufbert_jax.data.tokenizer import SpecialIds


def token_rows(
    tokenizer: Tokenizer, path: str | Path, seq_len: int, max_tokens: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(token_ids [R, S] int32, attention_mask [R, S] int32) of the file's first `max_tokens` tokens (0: all).

    The file's documents (a Gutenberg book's body, blank-line blocks, WikiExtractor articles; see
    ufbert_jax.data.corpus) are encoded and concatenated with <sep> after each, as the pretraining shards are,
    and cut into rows of S tokens; the last row is padded with <pad> and masked.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} not found")
    if seq_len < 1 or max_tokens < 0:
        raise ValueError(f"need seq_len >= 1 and max_tokens >= 0; got {seq_len=}, {max_tokens=}")
    special = SpecialIds.of(tokenizer)
    ids = encode_documents(tokenizer, list(file_documents(path)), special.sep)  # [tokens]
    if max_tokens:
        ids = ids[:max_tokens]
    if ids.size == 0:
        raise ValueError(f"{path} has no tokens")
    rows = -(-ids.size // seq_len)
    padded = np.full(rows * seq_len, special.pad, np.int32)
    padded[: ids.size] = ids
    mask = (np.arange(rows * seq_len) < ids.size).astype(np.int32)
    return padded.reshape(rows, seq_len), mask.reshape(rows, seq_len)
