"""Pretraining corpora as streams of documents (one str each), from local files, Hugging Face or TFDS.

A document is the unit the packer separates with <sep> (as the original packs one dataset row after the
other): a Wikipedia article, a Gutenberg book, or a blank-line-separated block of a plain text file.

Source specs (`documents_from_spec`), for command lines and configs:
  path:/some/dir  or a plain path    local files (`local_documents`)
  hf:NAME[:CONFIG][/SPLIT]           Hugging Face `datasets`, streamed (`hf_documents`); NAME is a hub id
                                     (owner/name) or a local file; SPLIT defaults to "train"
  tfds:NAME[/CONFIG]/SPLIT, tfds:NAME   tensorflow-datasets data source (`tfds_documents`), read from
                                     $TFDS_DATA_DIR; SPLIT defaults to "train"
The text field is "text" for hf: and tfds: specs; call the functions directly for another field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

# Directory walks read only these (WikiExtractor writes suffix-less wiki_00 files); README.md, checksum
# lists and archives next to a corpus are not text to train on. An explicitly named file is always read.
TEXT_SUFFIXES = frozenset({".txt", ".text", ""})
METADATA_NAMES = frozenset({"SHA256SUMS", "MD5SUMS", "LICENSE", "COPYING"})

_WIKI_DOC = re.compile(r"^<doc [^>]*>\n(.*?)^</doc>$", re.DOTALL | re.MULTILINE)
# Project Gutenberg markers, old and new: "*** START OF THIS PROJECT GUTENBERG EBOOK X ***", "***END OF ...".
_PG_START = re.compile(r"^\*\*\* ?START OF.*$", re.MULTILINE)
_PG_END = re.compile(r"^\*\*\* ?END OF.*$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n\s*\n")


# A file is text when it has no NUL byte and at most this fraction of bytes that are not UTF-8.
MAX_UNDECODABLE_FRACTION = 0.001

#: The longest text, in characters, that the tokenizer gets at once, to train on or to encode: a longer
#: document goes in pieces (`pieces`). The tokenizer's memory grows with its input, ~160 bytes a character
#: (a 30 MB line, tokenized whole, peaked at 5 GB).
MAX_PIECE_CHARS = 1 << 16
_ASCII_WHITESPACE = " \n\t\r\f\v"


def _read_text(path: Path) -> str:
    """The file as text with LF line ends (PG books mix CRLF and lone CR).

    A stray undecodable byte becomes U+FFFD, which the tokenizer's normaliser drops with the rest of
    non-ASCII; a file that is not UTF-8 text (a NUL byte: binary or UTF-16; more undecodable bytes than
    MAX_UNDECODABLE_FRACTION: another encoding, an archive) is a ValueError naming it, not silent noise.
    """
    data = path.read_bytes()
    if b"\0" in data:
        raise ValueError(f"corpus file {path} is not text: it has NUL bytes (binary, or UTF-16?)")
    text = data.decode("utf-8", errors="replace")
    undecodable = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
    if undecodable > MAX_UNDECODABLE_FRACTION * len(data):
        raise ValueError(
            f"corpus file {path} is not UTF-8 text: {undecodable} of its {len(data)} bytes do not decode "
            "(another encoding? convert it, e.g. iconv -f latin1 -t utf-8)"
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _paragraphs(text: str) -> list[str]:
    """Blank-line-separated blocks with their hard-wrapped lines joined by spaces."""
    blocks = (" ".join(line.strip() for line in block.splitlines()) for block in _BLANK_LINES.split(text))
    return [block.strip() for block in blocks if block.strip()]


def pieces(text: str) -> Iterator[str]:
    """`text` as consecutive pieces of at most MAX_PIECE_CHARS characters that concatenate to it, each cut
    just before the last ASCII whitespace that keeps it within the limit.

    The tokenizer's pre-tokenizer splits words at whitespace anyway, so training on or encoding the pieces
    gives exactly the words and ids of the whole text. Only a stretch without whitespace longer than the
    limit (not a word: WordPiece turns any word over 100 characters into <unk>) is cut where the limit falls.
    """
    limit = MAX_PIECE_CHARS  # read at call time (tests lower it)
    start = 0
    while len(text) - start > limit:
        end = start + limit
        cut = max(text.rfind(space, start + 1, end + 1) for space in _ASCII_WHITESPACE)
        cut = end if cut <= start else cut  # the whitespace begins the next piece
        yield text[start:cut]
        start = cut
    yield text[start:]


def wikiextractor_documents(text: str) -> Iterator[str]:
    """Articles of a WikiExtractor file, without the title line WikiExtractor repeats first."""
    for match in _WIKI_DOC.finditer(text):
        _title, _, body = match.group(1).partition("\n")
        if body.strip():
            yield body.strip()


def gutenberg_body(text: str) -> str:
    """The book between the PG "*** START OF" and "*** END OF" lines (the licence stays out of training)."""
    start, end = _PG_START.search(text), _PG_END.search(text)
    return text[start.end() if start else 0 : end.start() if end else len(text)]


def gutenberg_documents(text: str) -> Iterator[str]:
    """One document per book, its paragraphs unwrapped and separated by newlines."""
    book = "\n".join(_paragraphs(gutenberg_body(text)))
    if book:
        yield book


def plain_documents(text: str) -> Iterator[str]:
    """Blank-line-separated documents (the BERT pretraining-text convention); lines kept as they are."""
    for block in _BLANK_LINES.split(text):
        if block.strip():
            yield block.strip()


def file_documents(path: Path) -> Iterator[str]:
    """Documents of one file, its format detected from the content: WikiExtractor, Gutenberg, else plain."""
    text = _read_text(path)
    if re.search(r"^<doc [^>]*>$", text, re.MULTILINE):
        yield from wikiextractor_documents(text)
    elif _PG_START.search(text):
        yield from gutenberg_documents(text)
    else:
        yield from plain_documents(text)


def corpus_files(path: str | Path) -> list[Path]:
    """`path` itself if a file, else the text files below it in sorted order (so runs are reproducible)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"corpus path {path} does not exist")
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in TEXT_SUFFIXES
        and p.name not in METADATA_NAMES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def local_documents(paths: str | Path | Iterable[str | Path]) -> Iterator[str]:
    """Documents of local files or folders (see `file_documents`), in path order, then sorted file order.

    A missing path is a FileNotFoundError naming it, raised here rather than on first use; a corpus that
    yields no document at all is a ValueError naming the paths, raised when the iterator runs dry.
    """
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    files = [f for p in paths for f in corpus_files(p)]
    return _documents_of(files, [str(p) for p in paths])


def _documents_of(files: list[Path], names: list[str]) -> Iterator[str]:
    count = 0
    for file in files:
        for document in file_documents(file):
            count += 1
            yield document
    if count == 0:
        raise ValueError(f"corpus {names} has no documents ({len(files)} text files read)")


def _field_text(record: dict, text_field: str, where: str) -> str:
    if text_field not in record:
        raise KeyError(f"{where}: record has no field {text_field!r}; fields are {sorted(record)}")
    text = record[text_field]
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"{where}: field {text_field!r} is a {type(text).__name__}, expected text")
    return text


HF_LOCAL_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def hf_documents(
    name: str, split: str = "train", text_field: str = "text", config: str | None = None
) -> Iterator[str]:
    """Documents of a Hugging Face dataset, streamed (nothing is downloaded up front).

    `name` is a hub id, or a local .txt/.json/.jsonl/.csv/.parquet file, read with the matching
    builder: that works offline (HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1). For .txt files each line is a
    record (HF's "text" builder), so prefer `local_documents` for local text.
    """
    import datasets  # a heavy import, needed by this source only

    if Path(name).is_file():
        suffix = Path(name).suffix
        if suffix not in HF_LOCAL_BUILDERS:
            raise ValueError(
                f"hf source {name}: cannot read {suffix!r} files, only {sorted(HF_LOCAL_BUILDERS)}"
            )
        stream = datasets.load_dataset(
            HF_LOCAL_BUILDERS[suffix], data_files=name, split=split, streaming=True
        )
    else:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
    where = f"hf dataset {name}" + (f":{config}" if config else "") + f"/{split}"
    for record in stream:
        yield _field_text(record, text_field, where)


def tfds_documents(
    name: str, split: str = "train", text_field: str = "text", data_dir: str | Path | None = None
) -> Iterator[str]:
    """Documents of a tensorflow-datasets dataset through its data-source API (ArrayRecord, no TensorFlow).

    The dataset must be prepared already (`builder.download_and_prepare(file_format="array_record")`) in
    `data_dir` (default: $TFDS_DATA_DIR or ~/tensorflow_datasets); nothing is downloaded here.
    """
    import tensorflow_datasets as tfds  # a heavy import, needed by this source only

    data_dir = None if data_dir is None else str(data_dir)
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    where = f"tfds dataset {name}/{split}"
    for i in range(len(source)):
        yield _field_text(source[i], text_field, where)


SCHEMES = ("path", "hf", "tfds")


def _parse_hf(rest: str) -> tuple[str, str | None, str]:
    """Splits NAME[:CONFIG][/SPLIT] into (name, config, split).

    Without a config NAME is a hub id (owner/name), so a split needs three segments: hf:owner/name/split.
    """
    if Path(rest).exists():
        return rest, None, "train"
    if ":" in rest:
        name, _, config_split = rest.partition(":")
        config, _, split = config_split.partition("/")
        return name, config or None, split or "train"
    parts = rest.split("/")
    if len(parts) == 3:
        return "/".join(parts[:2]), None, parts[2]
    return rest, None, "train"


def documents_from_spec(spec: str) -> Iterator[str]:
    """The documents of one source spec (see the module docstring for the syntax)."""
    scheme, sep, rest = spec.partition(":")
    if not sep or Path(spec).exists():
        return local_documents(spec)
    if scheme == "path":
        return local_documents(rest)
    if scheme == "hf":
        name, config, split = _parse_hf(rest)
        return hf_documents(name, split, "text", config=config)
    if scheme == "tfds":
        name, _, split = rest.rpartition("/") if "/" in rest else (rest, "", "train")
        return tfds_documents(name, split)
    raise ValueError(f"source spec {spec!r}: unknown scheme {scheme!r}; expected one of {SCHEMES} or a path")
