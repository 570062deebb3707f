"""The WordPiece tokenizer of the original recipe and its special tokens.

Special tokens are <pad> <s> </s> <unk> <cls> <sep> <mask>; their ids are always read from the tokenizer
file, never assumed (the published checkpoint's order is not ours to guess).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<cls>", "<sep>", "<mask>")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int
    eos: int
    unk: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialIds:
        """Reads the ids from the tokenizer; a missing special token is a ValueError naming it."""
        ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
        missing = [token for token, i in ids.items() if i is None]
        if missing:
            raise ValueError(
                f"tokenizer lacks the special tokens {missing}; expected all of {SPECIAL_TOKENS}"
            )
        return cls(*(ids[token] for token in SPECIAL_TOKENS))

    def all(self) -> frozenset[int]:
        return frozenset(dataclasses.astuple(self))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Loads a `tokenizers` JSON file; a missing file is a FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found")
    return Tokenizer.from_file(str(path))


def _untrained_wordpiece() -> Tokenizer:
    """The original's pipeline: NFD, lowercase, strip accents, drop what is still non-ASCII; BERT pre-split.

    Stripping accents after NFD keeps "café" as "cafe"; only characters without an ASCII base (CJK, emoji,
    ...) are removed. No post-processor: the packer inserts <sep> (and a GLUE encoder <cls>) itself.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.NFD(),
            normalizers.Lowercase(),
            normalizers.StripAccents(),
            normalizers.Replace(Regex(r"[^\x00-\x7F]"), ""),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def save_atomically(text: str, path: str | Path) -> None:
    """Writes `text` to `path` via a temporary file in the same folder, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def train_wordpiece(texts: Iterable[str], vocab_size: int, out_path: str | Path) -> Tokenizer:
    """Trains the WordPiece tokenizer on `texts`, writes it to `out_path` (atomically) and returns it.

    `vocab_size` is an upper bound: a small corpus yields fewer tokens. The special tokens come first in the
    vocabulary, but callers must still read their ids with `SpecialIds.of`.
    """
    if vocab_size < len(SPECIAL_TOKENS):
        raise ValueError(f"{vocab_size=} must be >= {len(SPECIAL_TOKENS)} (the special tokens)")
    tokenizer = _untrained_wordpiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    save_atomically(tokenizer.to_str(), out_path)
    return tokenizer


def check_vocabulary(tokenizer: Tokenizer, vocab_size: int, where: str) -> None:
    """Every token id of the tokenizer must have a row in the model's embedding (vocab_size rows).

    A larger tokenizer means the checkpoint was made with another tokenizer; a smaller one is fine (models
    often pad their vocabulary, and a WordPiece trained on a small corpus stops short of its target size).
    """
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ValueError(
            f"{where}: the tokenizer has {size} tokens but the model's vocab_size is only {vocab_size}: "
            "the checkpoint was made with another tokenizer"
        )


def longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Kept lengths of a pair truncated longest-first to `budget` tokens (ties trim the second text)."""
    if len_a + len_b <= budget:
        return len_a, len_b
    if len_a <= budget // 2:
        return len_a, budget - len_a
    if len_b <= budget // 2:
        return budget - len_b, len_b
    return (budget + 1) // 2, budget // 2


def encode_texts(tokenizer: Tokenizer, texts: tuple[list[str], ...], max_len: int) -> list[np.ndarray]:
    """Token ids [<= max_len] int32 per example: "A <sep>" for one text, "<cls> A <sep> B <sep>" for two.

    The layout of the cramming tokenizer's post-processor (ULTRAFASTBERT_FACTS section 3), added here so
    that any tokenizer file works with or without one. `texts` holds one list of strings per column. Text
    beyond `max_len` is cut before the special tokens are added: a single text from its end, a pair
    longest-first (the longer side loses a token at a time, the second on ties), as Hugging Face does.
    """
    if len(texts) not in (1, 2):
        raise ValueError(f"expected 1 or 2 text columns, got {len(texts)}")
    special = SpecialIds.of(tokenizer)
    columns = [
        [encoding.ids for encoding in tokenizer.encode_batch(column, add_special_tokens=False)]
        for column in texts
    ]
    if len(texts) == 1:
        if max_len < 2:
            raise ValueError(f"{max_len=} must be >= 2 for '<A> <sep>'")
        return [np.asarray([*ids[: max_len - 1], special.sep], np.int32) for ids in columns[0]]
    if max_len < 3:
        raise ValueError(f"{max_len=} must be >= 3 for '<cls> A <sep> B <sep>'")
    encoded = []
    for a, b in zip(*columns, strict=True):
        keep_a, keep_b = longest_first(len(a), len(b), max_len - 3)
        encoded.append(
            np.asarray([special.cls, *a[:keep_a], special.sep, *b[:keep_b], special.sep], np.int32)
        )
    return encoded
