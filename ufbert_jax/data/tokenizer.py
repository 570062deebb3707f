"""The WordPiece tokenizer of the original recipe and its special tokens.

Special tokens are <pad> <s> </s> <unk> <cls> <sep> <mask>; their ids are always read from the tokenizer
file, never assumed (the published checkpoint's order is not ours to guess).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokenizers import Tokenizer

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
            raise ValueError(f"tokenizer lacks the special tokens {missing}; expected all of {SPECIAL_TOKENS}")
        return cls(*(ids[token] for token in SPECIAL_TOKENS))

    def all(self) -> frozenset[int]:
        return frozenset(dataclasses.astuple(self))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Loads a `tokenizers` JSON file; a missing file is a FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found")
    return Tokenizer.from_file(str(path))
