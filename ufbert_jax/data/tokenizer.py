"""The WordPiece tokenizer of the original recipe and its special tokens.

Special tokens are <pad> <s> </s> <unk> <cls> <sep> <mask>; their ids are always read from the tokenizer
file, never assumed (the published checkpoint's order is not ours to guess).

Training is reproducible: the same texts and vocab_size give a byte-identical tokenizer.json (see
`train_wordpiece` for what that takes with the `tokenizers` trainer).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ufbert_jax import io

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<cls>", "<sep>", "<mask>")
#: The tokenizer's file name wherever it travels: a workdir, a shard folder, an original-format checkpoint.
TOKENIZER_FILE = "tokenizer.json"


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
    def of(cls, tokenizer: Tokenizer, where: str | Path | None = None) -> SpecialIds:
        """Reads the ids from the tokenizer; a missing special token is a ValueError naming it (and
        `where`, the tokenizer's file, when given)."""
        ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
        missing = [token for token, i in ids.items() if i is None]
        if missing:
            prefix = "" if where is None else f"{where}: "
            raise ValueError(
                f"{prefix}tokenizer lacks the special tokens {missing}; expected all of {SPECIAL_TOKENS}"
            )
        return cls(*(ids[token] for token in SPECIAL_TOKENS))

    def all(self) -> frozenset[int]:
        return frozenset(dataclasses.astuple(self))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Loads a `tokenizers` JSON file; a missing file is a FileNotFoundError, an empty, truncated or
    foreign one an io.FileFormatError, each naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a bare Exception for every parse failure
        raise io.FileFormatError(f"{path}: not a `tokenizers` JSON file ({err})") from None


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


CONTINUING_PREFIX = "##"


def continuation_tokens(tokenizer: Tokenizer) -> list[str]:
    """ "##c" for every character c that can follow another inside a word after `tokenizer`'s normaliser
    and pre-tokenizer (for our pipeline: lowercase letters, digits, control characters), in code order.

    Asks the tokenizer's own normaliser and pre-tokenizer about each ASCII character (nothing else
    survives the normaliser), so the list is exact for this pipeline.
    """
    kept = []
    for code in range(128):
        text = tokenizer.normalizer.normalize_str(f"a{chr(code)}")
        words = tokenizer.pre_tokenizer.pre_tokenize_str(text)
        if len(words) == 1 and len(words[0][0]) == 2:
            kept.append(CONTINUING_PREFIX + words[0][0][1])
    return sorted(set(kept))


def _without_registration(data: dict, registered: list[str], vocab_size: int) -> dict:
    """A trained tokenizer's JSON after `train_wordpiece` registered the "##c" tokens `registered`: they
    are ordinary tokens again (not added tokens), those whose character never occurred are dropped, the
    first `vocab_size` tokens in trained order are kept and numbered without gaps (WordPiece matches by
    string, so the ids are labels, and any prefix of the merges is a vocabulary)."""
    vocab = data["model"]["vocab"]  # token -> id
    unseen = {t for t in registered if t[len(CONTINUING_PREFIX) :] not in vocab}
    kept = sorted((t for t in vocab if t not in unseen), key=vocab.__getitem__)[:vocab_size]
    ids = {token: i for i, token in enumerate(kept)}
    added = [{**t, "id": ids[t["content"]]} for t in data["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    return {**data, "added_tokens": added, "model": {**data["model"], "vocab": ids}}


def train_wordpiece(texts: Iterable[str], vocab_size: int, out_path: str | Path) -> Tokenizer:
    """Trains the WordPiece tokenizer on `texts`, writes it to `out_path` (atomically) and returns it.

    `vocab_size` is an upper bound: a small corpus yields fewer tokens. The special tokens come first in the
    vocabulary, but callers must still read their ids with `SpecialIds.of`.

    Reproducible by construction. The `tokenizers` trainer (0.23) gives each "##c" continuation token its
    id in the iteration order of a hash map of the corpus words, random per process, and breaks ties
    between equally frequent merges by those ids, so two runs differ (huggingface/tokenizers#1794). Here
    every possible "##c" is registered up front, in code order, as a trainer special token (the trainer
    adds those before it reads the words); afterwards they are ordinary vocabulary entries again, and
    those of characters the corpus never had are dropped (`_without_registration`), so the vocabulary
    still reaches `vocab_size` when the corpus has enough text.
    """
    if vocab_size < len(SPECIAL_TOKENS):
        raise ValueError(f"{vocab_size=} must be >= {len(SPECIAL_TOKENS)} (the special tokens)")
    tokenizer = _untrained_wordpiece()
    registered = continuation_tokens(tokenizer)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size + len(registered),  # room for the unseen ones, dropped below
        special_tokens=[*SPECIAL_TOKENS, *registered],
        continuing_subword_prefix=CONTINUING_PREFIX,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    trained = _without_registration(json.loads(tokenizer.to_str()), registered, vocab_size)
    tokenizer = Tokenizer.from_str(json.dumps(trained))
    io.write_text(out_path, tokenizer.to_str())
    return tokenizer


def id_bound(tokenizer: Tokenizer) -> int:
    """1 + the largest token id of the tokenizer (added tokens included): every id it emits is below.

    Not `get_vocab_size()`, which counts tokens: a vocabulary with gaps in its ids has ids beyond it.
    """
    return 1 + max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)


def check_vocabulary(tokenizer: Tokenizer, vocab_size: int, where: str) -> None:
    """Every token id of the tokenizer must have a row in the model's embedding (vocab_size rows).

    A larger tokenizer means the checkpoint was made with another tokenizer; a smaller one is fine (models
    often pad their vocabulary, and a WordPiece trained on a small corpus stops short of its target size).
    """
    bound = id_bound(tokenizer)
    if bound > vocab_size:
        raise ValueError(
            f"{where}: the tokenizer's ids reach {bound - 1} ({tokenizer.get_vocab_size()} tokens) but the "
            f"model's vocab_size is only {vocab_size}: the checkpoint was made with another tokenizer"
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

    The layout of the cramming tokenizer's post-processor (docs/glue.md, Tokenisation), added here so
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
