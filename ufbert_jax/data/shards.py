"""Corpus -> packed token shards on disk, and a memory-mapped random-access source over them.

Packing follows the original (cramming): every document is tokenized without specials and followed by
<sep>, the results are concatenated in corpus order and cut into rows of exactly S tokens; a document may
span rows, and the final partial row is dropped. Shard layout (see docs/data.md):

    out_dir/
      manifest.json        format, seq_len, vocab_size, dtype, tokenizer_sha256, sources, tokenizer_sources,
                           shards + row counts
      tokenizer.json       a copy of the tokenizer the ids belong to (shards travel with it)
      tokenizer.sources.json   the sources that tokenizer was trained on, where known
      shard_00000.npy ...  [rows, S] uint16 (int32 when V > 65536)

The manifest is written last, so its presence marks a complete set; a second run with the same inputs
returns at once, one with another tokenizer, seq_len or sources is an error naming both values.

A tokenizer trained here gets a record of its sources beside it (`<name>.sources.json`, with the file's
sha256), so that reusing it for another corpus is never silent: `prepare_shards` warns, naming both.
`folder_name` names a shard folder after everything that decides its contents, so callers that derive the
folder (train.py when --config.data.shard_dir is empty) get new shards whenever the corpus changes.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import multiprocessing
import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from ufbert_jax import io
from ufbert_jax.data.corpus import documents_from_spec, pieces
from ufbert_jax.data.tokenizer import TOKENIZER_FILE, SpecialIds, id_bound, load_tokenizer, train_wordpiece

log = logging.getLogger("ufbert_jax.data")

FORMAT = "ufbert-jax-shards/1"
MANIFEST_FILE = "manifest.json"
SOURCES_SUFFIX = (
    ".sources.json"  # tokenizer.json -> tokenizer.sources.json: what the tokenizer was trained on
)
DEFAULT_SHARD_ROWS = 262_144  # 64 MiB of uint16 rows at S=128: few files, each cheap to copy or mmap
CHUNK_DOCUMENTS = 64  # documents per worker task: large enough to amortise pickling, small for a smooth bar
MAX_BATCH_CHARS = (
    1 << 20
)  # characters per call of the tokenizer (~160 MB of its memory), see encode_documents
# Keys that must agree for existing shards to be reused.
IDENTITY_KEYS = ("format", "seq_len", "tokenizer_sha256", "sources")
MANIFEST_KEYS = (*IDENTITY_KEYS, "vocab_size", "dtype", "rows", "shards")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (V <= 65536), halving disk and page-cache use; else int32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def folder_name(
    sources: list[str], vocab_size: int, seq_len: int, tokenizer_sha256: str | None = None
) -> str:
    """A shard folder's name, NAME-V-HASH: NAME the first source's last path part (readable), V the vocabulary
    size, HASH 8 hex digits of the sha256 of the sources, V, seq_len and the tokenizer's sha256 (None: a
    tokenizer trained on these sources). Any change to them gives another folder."""
    key = json.dumps([[str(spec) for spec in sources], vocab_size, seq_len, tokenizer_sha256])
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    last = re.split(r"[/:]", str(sources[0]).rstrip("/"))[-1] if sources else ""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", last).strip("._")[:32] or "corpus"
    return f"{name}-{vocab_size}-{digest}"


def sources_record(tokenizer_path: str | Path) -> Path:
    """Where the record of a tokenizer's training sources lives: beside it, <stem>.sources.json."""
    path = Path(tokenizer_path)
    return path.with_name(path.stem + SOURCES_SUFFIX)


def record_tokenizer_sources(tokenizer_path: str | Path, sources: list[str]) -> None:
    """Writes the record that `tokenizer_path` (as it is now) was trained on `sources`."""
    record = {"sources": [str(spec) for spec in sources], "tokenizer_sha256": file_sha256(tokenizer_path)}
    io.write_text(sources_record(tokenizer_path), json.dumps(record, indent=2) + "\n")


def tokenizer_sources(tokenizer_path: str | Path) -> list[str] | None:
    """The sources `tokenizer_path` was trained on, or None where unknown (no record, an unreadable one, or
    one written for another version of the file)."""
    path = sources_record(tokenizer_path)
    if not path.is_file():
        return None
    try:
        record = io.read_json(path)
        if record["tokenizer_sha256"] == file_sha256(tokenizer_path):
            return [str(spec) for spec in record["sources"]]
    except (ValueError, KeyError, TypeError) as error:
        log.warning("%s: ignoring an unreadable record (%s)", path, error)
    return None


def documents(sources: Iterable[str]) -> Iterator[str]:
    """The documents of all source specs, one source after the other."""
    return itertools.chain.from_iterable(documents_from_spec(spec) for spec in sources)


def encode_documents(tokenizer: Tokenizer, docs: list[str], sep: int) -> np.ndarray:
    """The token ids of `docs`, each followed by `sep`, concatenated: [sum(len(doc) + 1)] int32.

    The tokenizer gets the documents in their pieces (corpus.pieces: the same ids as each one whole), at
    most MAX_BATCH_CHARS characters per call, so its memory stays bounded whatever a document's length.
    """
    parts: list[np.ndarray] = []
    batch: list[str] = []
    ends: list[bool] = []  # whether each piece of the batch ends its document

    def encode() -> None:
        for encoding, end in zip(tokenizer.encode_batch(batch, add_special_tokens=False), ends, strict=True):
            parts.append(np.asarray(encoding.ids, np.int32))
            if end:
                parts.append(np.asarray([sep], np.int32))
        batch.clear()
        ends.clear()

    characters = 0
    for doc in docs:
        for piece, is_last in _with_last(pieces(doc)):
            batch.append(piece)
            ends.append(is_last)
            characters += len(piece)
            if characters >= MAX_BATCH_CHARS:
                encode()
                characters = 0
    if batch:
        encode()
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _with_last(items: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """(item, whether it is the last one) for each item."""
    items = iter(items)
    previous = next(items)
    for item in items:
        yield previous, False
        previous = item
    yield previous, True


def pack_rows(token_chunks: Iterable[np.ndarray], seq_len: int) -> Iterator[np.ndarray]:
    """Cuts the concatenation of `token_chunks` into full rows: yields [R, S] blocks; drops the last < S."""
    carry = np.zeros(0, np.int32)
    for chunk in token_chunks:
        tokens = np.concatenate([carry, chunk])
        full = len(tokens) // seq_len * seq_len
        if full:
            yield tokens[:full].reshape(-1, seq_len)  # [R, S]
        carry = tokens[full:]


_worker_tokenizer: Tokenizer | None = None
_worker_sep: int = -1


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer, _worker_sep
    # The processes are the parallelism; a Rust thread pool in each would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = load_tokenizer(tokenizer_path)
    _worker_sep = SpecialIds.of(_worker_tokenizer).sep


def _encode_in_worker(docs: list[str]) -> np.ndarray:
    return encode_documents(_worker_tokenizer, docs, _worker_sep)


def _token_chunks(
    docs: Iterable[str], tokenizer_path: Path, num_workers: int, on_documents: Callable[[int], object]
) -> Iterator[np.ndarray]:
    """encode_documents over chunks of `docs`, in corpus order whatever `num_workers` is."""
    chunks = (list(chunk) for chunk in itertools.batched(docs, CHUNK_DOCUMENTS))
    if num_workers <= 1:
        tokenizer = load_tokenizer(tokenizer_path)
        sep = SpecialIds.of(tokenizer).sep
        for chunk in chunks:
            yield encode_documents(tokenizer, chunk, sep)
            on_documents(len(chunk))
        return
    # spawn, not fork: the parent may hold JAX or tokenizers threads, which fork would copy mid-flight.
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_workers, initializer=_init_worker, initargs=(str(tokenizer_path),)) as pool:
        # Bounded, ordered submission: Pool.imap would read the whole corpus ahead into its task queue.
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append((pool.apply_async(_encode_in_worker, (chunk,)), len(chunk)))
            if len(pending) >= 2 * num_workers:
                result, count = pending.popleft()
                yield result.get()
                on_documents(count)
        for result, count in pending:
            yield result.get()
            on_documents(count)


def write_shards(rows: Iterable[np.ndarray], out_dir: Path, shard_size: int, dtype: np.dtype) -> list[dict]:
    """Writes the [R, S] blocks of `rows` as shard_00000.npy, ... of `shard_size` rows (the last may be
    shorter), each atomically; returns [{"file", "rows"}] in order."""
    shards: list[dict] = []
    buffer: list[np.ndarray] = []
    buffered = 0

    def flush(count: int) -> None:
        nonlocal buffer, buffered
        block = np.concatenate(buffer)
        name = f"shard_{len(shards):05d}.npy"
        with io.atomic_open(out_dir / name, "wb") as f:
            np.save(f, block[:count].astype(dtype))
        shards.append({"file": name, "rows": count})
        buffer, buffered = [block[count:]], len(block) - count

    for block in rows:
        buffer.append(block)
        buffered += len(block)
        while buffered >= shard_size:
            flush(shard_size)
    if buffered:
        flush(buffered)
    return shards


def _open_shard(path: Path) -> np.ndarray:
    """The shard's [rows, S] array, memory-mapped; a missing, truncated or foreign file names itself."""
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: the manifest lists it") from None
    except (ValueError, OSError, EOFError) as err:
        raise io.FileFormatError(f"{path}: not a readable .npy shard ({err}); truncated?") from None


def read_manifest(shard_dir: str | Path) -> dict:
    """The manifest of a shard folder; a folder without one is a FileNotFoundError naming it."""
    path = Path(shard_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {shard_dir} holds no complete token shards (prepare_shards)"
        )
    manifest = io.read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise io.FileFormatError(f"{path}: format {found!r}, expected {FORMAT!r}")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise io.FileFormatError(f"{path}: keys {missing} missing; expected {list(MANIFEST_KEYS)}")
    return manifest


def _check_reusable(existing: dict, wanted: dict, out_dir: Path) -> None:
    for key in IDENTITY_KEYS:
        if existing[key] != wanted[key]:
            raise ValueError(
                f"{out_dir} holds shards with {key}={existing[key]!r}, but this run asks for "
                f"{key}={wanted[key]!r}; write them to another folder (train.py: leave "
                "--config.data.shard_dir empty to derive one from the corpus, or name a new one) or delete "
                "the old shards"
            )
    missing = [s["file"] for s in existing["shards"] if not (out_dir / s["file"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: the manifest lists shard files that are missing: {missing}")


def prepare_shards(
    sources: list[str],
    out_dir: str | Path,
    tokenizer_path: str | Path,
    *,
    seq_len: int = 128,
    vocab_size: int = 32768,
    shard_size: int = DEFAULT_SHARD_ROWS,
    num_workers: int | None = None,
) -> Path:
    """Tokenizes and packs `sources` (specs, see corpus.py) into `out_dir`; returns `out_dir`.

    Trains a WordPiece tokenizer of at most `vocab_size` tokens on `sources` first if `tokenizer_path`
    does not exist, and records its sources beside it (else `vocab_size` is unused: the file decides; one
    recorded as trained on other sources is used with a warning naming both). `num_workers` tokenizer
    processes (default: all cores; <= 1 tokenizes in this process); the shards are the same for any count.
    """
    if seq_len < 1 or shard_size < 1:
        raise ValueError(f"{seq_len=} and {shard_size=} must be >= 1")
    sources = [str(spec) for spec in sources]
    if not sources:
        raise ValueError("sources is empty; expected at least one source spec")
    out_dir, tokenizer_path = Path(out_dir), Path(tokenizer_path)
    if tokenizer_path.is_file():
        tokenizer = load_tokenizer(tokenizer_path)
        trained_on = tokenizer_sources(tokenizer_path)
        if trained_on is not None and trained_on != sources:
            log.warning(
                "%s was trained on %s, not on this corpus %s: reusing it as given (its vocabulary may fit "
                "this corpus poorly; a tokenizer path of its own gets one trained on this corpus)",
                tokenizer_path,
                trained_on,
                sources,
            )
    else:
        docs = tqdm(documents(sources), desc="training tokenizer", unit="doc")
        # In pieces (corpus.pieces): the same words, in bounded memory.
        tokenizer = train_wordpiece(
            (piece for doc in docs for piece in pieces(doc)), vocab_size, tokenizer_path
        )
        record_tokenizer_sources(tokenizer_path, sources)
        trained_on = sources
    actual_vocab = id_bound(tokenizer)  # every id is below it (the dtype must hold them all)
    wanted = {
        "format": FORMAT,
        "seq_len": seq_len,
        "vocab_size": actual_vocab,
        "dtype": token_dtype(actual_vocab).name,
        "tokenizer_sha256": file_sha256(tokenizer_path),
        "sources": sources,
        "separator_id": SpecialIds.of(tokenizer, tokenizer_path).sep,
    }
    if (out_dir / MANIFEST_FILE).is_file():
        _check_reusable(read_manifest(out_dir), wanted, out_dir)
        return out_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    # Shards and temporary files of an interrupted run (it wrote no manifest) would mix with this one's.
    for stale in [*out_dir.glob("shard_*.npy"), *out_dir.glob(".shard_*.npy.*")]:
        stale.unlink()
    if tokenizer_path.resolve() != (out_dir / TOKENIZER_FILE).resolve():
        io.write_bytes(out_dir / TOKENIZER_FILE, tokenizer_path.read_bytes())
        if trained_on is not None:
            record_tokenizer_sources(out_dir / TOKENIZER_FILE, trained_on)
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    with tqdm(desc="tokenizing", unit="doc") as bar:
        chunks = _token_chunks(documents(sources), tokenizer_path, workers, bar.update)
        shards = write_shards(pack_rows(chunks, seq_len), out_dir, shard_size, token_dtype(actual_vocab))
    if not shards:
        raise ValueError(f"sources {sources} hold fewer than {seq_len=} tokens: not one row to write")
    # tokenizer_sources: what the tokenizer was trained on (None: unknown); a record, not an identity key.
    manifest = {
        **wanted,
        "tokenizer_sources": trained_on,
        "rows": sum(s["rows"] for s in shards),
        "shards": shards,
    }
    io.write_text(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return out_dir


class TokenShards:
    """Random access to the packed rows of a shard folder, memory-mapped: a grain RandomAccessDataSource.

    `shards[i]` is row i as [S] int32, every id checked to lie in [0, vocab_size) (an id beyond the
    embedding would turn the row's loss into NaN). Pickling carries only the folder, so worker processes
    re-map the files instead of copying them.
    """

    def __init__(self, shard_dir: str | Path):
        self.shard_dir = Path(shard_dir)
        self.manifest = read_manifest(self.shard_dir)
        self.seq_len: int = self.manifest["seq_len"]
        self.vocab_size: int = self.manifest["vocab_size"]
        self._files = [self.shard_dir / s["file"] for s in self.manifest["shards"]]
        self._arrays = [_open_shard(path) for path in self._files]
        for shard, path, array in zip(self.manifest["shards"], self._files, self._arrays, strict=True):
            if array.shape != (shard["rows"], self.seq_len) or array.dtype != self.manifest["dtype"]:
                raise io.FileFormatError(
                    f"{path}: {array.dtype} {array.shape}, the manifest says "
                    f"{self.manifest['dtype']} {(shard['rows'], self.seq_len)}"
                )
        self._starts = np.cumsum([0] + [s["rows"] for s in self.manifest["shards"]])  # [num_shards + 1]

    @property
    def tokenizer_path(self) -> Path:
        return self.shard_dir / TOKENIZER_FILE

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows in {self.shard_dir}")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = np.asarray(self._arrays[shard][index - self._starts[shard]], dtype=np.int32)  # [S]
        if row.min() < 0 or row.max() >= self.vocab_size:
            raise ValueError(
                f"{self._files[shard]} row {index - self._starts[shard]}: token ids span "
                f"[{row.min()}, {row.max()}], expected [0, {self.vocab_size}) (the manifest's vocab_size)"
            )
        return row

    def __repr__(self) -> str:
        return f"TokenShards({str(self.shard_dir)!r}, rows={len(self)}, seq_len={self.seq_len})"

    def __getstate__(self) -> dict:
        return {"shard_dir": self.shard_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["shard_dir"])
