"""Packing into token shards: exact rows, <sep> between documents, manifest, reuse and mismatch errors;
readable file modes, damaged files named, token ids checked."""

import hashlib
import io
import json
import logging
import os
import pickle
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from ufbert_jax.data import shards
from ufbert_jax.data.shards import TokenShards, prepare_shards, token_dtype
from ufbert_jax.data.tokenizer import SPECIAL_TOKENS, SpecialIds, load_tokenizer, train_wordpiece

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
)
SEQ = 16


def write_corpus(folder: Path, rng: np.random.Generator, num_docs: int = 40) -> list[str]:
    """Plain-text documents of random lengths (some longer than a row), blank-line separated."""
    docs = [" ".join(rng.choice(WORDS, size=rng.integers(1, 40))) + "." for _ in range(num_docs)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part_a.txt").write_text("\n\n".join(docs[: num_docs // 2]))
    (folder / "part_b.txt").write_text("\n\n".join(docs[num_docs // 2 :]))
    return docs


@pytest.fixture
def prepared(tmp_path, rng):
    docs = write_corpus(tmp_path / "corpus", rng)
    out = prepare_shards(
        [str(tmp_path / "corpus")], tmp_path / "shards", tmp_path / "tok.json", seq_len=SEQ, vocab_size=200,
        shard_size=7, num_workers=1,
    )  # fmt: skip
    return tmp_path, docs, out


def expected_stream(tokenizer_path: Path, docs: list[str]) -> np.ndarray:
    """Independent packing: every document's ids, then <sep>, concatenated."""
    tokenizer = load_tokenizer(tokenizer_path)
    sep = tokenizer.token_to_id("<sep>")
    return np.array([i for doc in docs for i in [*tokenizer.encode(doc, add_special_tokens=False).ids, sep]])


def test_rows_are_the_packed_stream(prepared):
    tmp_path, docs, out = prepared
    shards = TokenShards(out)
    stream = expected_stream(tmp_path / "tok.json", docs)
    assert len(shards) == len(stream) // SEQ
    rows = np.stack([shards[i] for i in range(len(shards))])
    assert rows.shape == (len(stream) // SEQ, SEQ) and rows.dtype == np.int32
    np.testing.assert_array_equal(rows.ravel(), stream[: rows.size])
    sep = load_tokenizer(tmp_path / "tok.json").token_to_id("<sep>")
    assert (rows == sep).sum() == (stream[: rows.size] == sep).sum() >= len(docs) - 2


def test_shard_files_and_manifest(prepared):
    tmp_path, docs, out = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    rows = len(expected_stream(tmp_path / "tok.json", docs)) // SEQ
    assert [s["rows"] for s in manifest["shards"]] == [7] * (rows // 7) + ([rows % 7] if rows % 7 else [])
    for shard in manifest["shards"]:
        array = np.load(out / shard["file"])
        assert array.dtype == np.uint16 and array.shape == (shard["rows"], SEQ)
    assert manifest["seq_len"] == SEQ and manifest["rows"] == rows
    assert manifest["tokenizer_sha256"] == hashlib.sha256((tmp_path / "tok.json").read_bytes()).hexdigest()
    assert manifest["vocab_size"] == load_tokenizer(tmp_path / "tok.json").get_vocab_size() <= 200
    assert manifest["sources"] == [str(tmp_path / "corpus")]
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "tok.json").read_bytes()


def test_rerun_reuses(prepared):
    tmp_path, _, out = prepared
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for file in (tmp_path / "corpus").iterdir():  # reuse must not even read the corpus
        file.unlink()
    again = prepare_shards(
        [str(tmp_path / "corpus")], out, tmp_path / "tok.json", seq_len=SEQ, shard_size=7, num_workers=1
    )
    assert again == out and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_mismatches_name_both_values(prepared, tmp_path):
    _, _, out = prepared
    corpus = [str(tmp_path / "corpus")]
    with pytest.raises(ValueError, match=rf"seq_len={SEQ}.*seq_len=32"):
        prepare_shards(corpus, out, tmp_path / "tok.json", seq_len=32, num_workers=1)
    other = tmp_path / "other_tok.json"
    train_wordpiece(["completely different text here"] * 5, 100, other)
    old, new = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "tok.json", other))
    with pytest.raises(ValueError, match=rf"tokenizer_sha256='{old}'.*tokenizer_sha256='{new}'"):
        prepare_shards(corpus, out, other, seq_len=SEQ, num_workers=1)
    with pytest.raises(ValueError, match=r"sources=.*corpus'\].*sources=.*elsewhere'\]"):
        prepare_shards([str(tmp_path / "elsewhere")], out, tmp_path / "tok.json", seq_len=SEQ, num_workers=1)


def test_interrupted_run_is_redone(prepared, tmp_path):
    _, _, out = prepared
    reference = [TokenShards(out)[i] for i in range(len(TokenShards(out)))]
    (out / "manifest.json").unlink()
    (out / "shard_00099.npy").write_bytes(b"stale")
    (out / ".shard_00001.npy.tmp123").write_bytes(b"half written")
    prepare_shards(
        [str(tmp_path / "corpus")], out, tmp_path / "tok.json", seq_len=SEQ, shard_size=7, num_workers=1
    )
    assert not (out / "shard_00099.npy").exists() and not (out / ".shard_00001.npy.tmp123").exists()
    again = TokenShards(out)
    np.testing.assert_array_equal(np.stack([again[i] for i in range(len(again))]), np.stack(reference))


def test_token_shards_random_access(prepared):
    _, _, out = prepared
    shards = TokenShards(out)
    everything = np.concatenate([np.load(p) for p in sorted(out.glob("shard_*.npy"))])
    for i in (0, 6, 7, len(shards) - 1):
        np.testing.assert_array_equal(shards[i], everything[i])
    with pytest.raises(IndexError, match=f"row {len(shards)} out of range"):
        shards[len(shards)]
    clone = pickle.loads(pickle.dumps(shards))
    np.testing.assert_array_equal(clone[3], everything[3])
    assert len(pickle.dumps(shards)) < 1000  # the folder travels, not the rows
    assert (
        SpecialIds.of(load_tokenizer(shards.tokenizer_path)).sep
        == json.loads((out / "manifest.json").read_text())["separator_id"]
    )


def test_too_little_text_for_a_row(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "short.txt").write_text("just a few words")
    train_wordpiece(["just a few words"], 50, tmp_path / "tok.json")
    with pytest.raises(ValueError, match="fewer than seq_len=128 tokens"):
        prepare_shards([str(tmp_path / "c")], tmp_path / "out", tmp_path / "tok.json", num_workers=1)


def test_missing_shard_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TokenShards(tmp_path / "nowhere")


def test_token_dtype():
    assert token_dtype(32768) == np.uint16 and token_dtype(2**16) == np.uint16
    assert token_dtype(2**16 + 1) == np.int32


@pytest.mark.slow
def test_parallel_tokenizing_gives_the_same_shards(prepared):
    tmp_path, _, out = prepared
    parallel = prepare_shards(
        [str(tmp_path / "corpus")], tmp_path / "parallel", tmp_path / "tok.json", seq_len=SEQ, shard_size=7,
        num_workers=2,
    )  # fmt: skip
    for name in json.loads((out / "manifest.json").read_text())["shards"]:
        assert (parallel / name["file"]).read_bytes() == (out / name["file"]).read_bytes()


@pytest.mark.slow
def test_sample_corpus_end_to_end(tmp_path):
    out = prepare_shards(
        [str(Path(__file__).parents[1] / "data" / "sample")], tmp_path / "shards", tmp_path / "tok.json",
        vocab_size=8192, num_workers=1,
    )  # fmt: skip
    shards = TokenShards(out)
    assert len(shards) > 3000 and shards.seq_len == 128 and shards.vocab_size == 8192
    text = load_tokenizer(tmp_path / "tok.json").decode(shards[0].tolist())
    assert "emma" in text and "gutenberg" not in text


# ---- robustness: readable modes, named file errors, ids checked ------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_follow_the_umask(tmp_path, rng, umask_022):
    """Shards are shared between users: 0644 under umask 022, not tempfile's private 0600."""
    write_corpus(tmp_path / "corpus", rng)
    out = prepare_shards(
        [str(tmp_path / "corpus")], tmp_path / "shards", tmp_path / "tok.json", seq_len=SEQ, vocab_size=200,
        shard_size=7, num_workers=1,
    )  # fmt: skip
    files = [tmp_path / "tok.json", *out.iterdir()]
    assert {p.name for p in files} >= {"tok.json", "manifest.json", "tokenizer.json", "shard_00000.npy"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file, expected JSON"), (b'{"format": "ufbert-jax-shards/1", "seq', "invalid JSON")],
)
def test_damaged_manifest_is_named(prepared, content, message):
    _, _, out = prepared
    (out / "manifest.json").write_bytes(content)
    with pytest.raises(ValueError, match=rf"{out / 'manifest.json'}: {message}"):
        TokenShards(out)


def test_truncated_or_retyped_shard_is_named(prepared):
    _, _, out = prepared
    path = out / "shard_00000.npy"
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    with pytest.raises(ValueError, match=rf"{path}: not a readable \.npy shard"):
        TokenShards(out)
    np.save(path, np.load(io.BytesIO(original)).astype(np.int32))
    with pytest.raises(ValueError, match=rf"{path}: int32 \(7, 16\), the manifest says uint16 \(7, 16\)"):
        TokenShards(out)


def test_ids_outside_the_vocabulary_are_named(prepared):
    """An id >= V would turn the row's loss into NaN: reading the row is an error naming file and row."""
    _, _, out = prepared
    shards = TokenShards(out)
    path = out / "shard_00000.npy"  # always full: every document gives >= 3 tokens, so >= 7 rows of 16
    rows = np.load(path)
    rows[3, 5] = shards.vocab_size
    np.save(path, rows)
    shards = TokenShards(out)
    shards[2]  # the rows around it are fine
    with pytest.raises(ValueError, match=rf"{path} row 3: token ids span \[\d+, {shards.vocab_size}\]"):
        shards[3]


def test_tokenizer_ids_beyond_uint16_get_int32_shards(tmp_path):
    """A tokenizer with few tokens but an id of 70000: the dtype follows the largest id, not the count."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)} | {"near": 7, "far": 70000}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tok.json"))
    (tmp_path / "corpus.txt").write_text("near far " * 20)
    out = prepare_shards(
        [str(tmp_path / "corpus.txt")], tmp_path / "shards", tmp_path / "tok.json", seq_len=SEQ, num_workers=1
    )
    shards = TokenShards(out)
    assert shards.manifest["dtype"] == "int32" and shards.vocab_size == 70001
    assert shards[0].max() == 70000


def test_a_tokenizer_records_its_sources_and_is_never_reused_silently(prepared, tmp_path, rng, caplog):
    _, _, out = prepared
    corpus = [str(tmp_path / "corpus")]
    assert shards.tokenizer_sources(tmp_path / "tok.json") == corpus  # trained by prepare_shards
    assert shards.tokenizer_sources(out / "tokenizer.json") == corpus  # the shard folder's copy
    assert json.loads((out / "manifest.json").read_text())["tokenizer_sources"] == corpus
    write_corpus(tmp_path / "other", rng)
    with caplog.at_level(logging.WARNING, logger="ufbert_jax.data"):
        prepare_shards([str(tmp_path / "other")], tmp_path / "other_shards", tmp_path / "tok.json",
                       seq_len=SEQ, num_workers=1)  # fmt: skip
    assert f"tok.json was trained on {corpus}, not on this corpus ['{tmp_path / 'other'}']" in caplog.text
    manifest = json.loads((tmp_path / "other_shards" / "manifest.json").read_text())
    assert manifest["sources"] == [str(tmp_path / "other")] and manifest["tokenizer_sources"] == corpus
    (tmp_path / "tok.json").write_bytes((tmp_path / "tok.json").read_bytes() + b"\n")  # edited since
    assert shards.tokenizer_sources(tmp_path / "tok.json") is None  # the record no longer applies


def test_folder_names_change_with_every_input():
    name = shards.folder_name(["data/sample"], 4096, 128)
    assert re.fullmatch(r"sample-4096-[0-9a-f]{8}", name)
    assert name == shards.folder_name(["data/sample"], 4096, 128)
    others = [
        shards.folder_name(["data/other"], 4096, 128),
        shards.folder_name(["data/sample", "hf:x/y"], 4096, 128),
        shards.folder_name(["data/sample"], 2048, 128),
        shards.folder_name(["data/sample"], 4096, 64),
        shards.folder_name(["data/sample"], 4096, 128, "0" * 64),
    ]
    assert len({name, *others}) == 6
    assert shards.folder_name(["hf:EleutherAI/pile"], 32768, 128).startswith("pile-32768-")


class RecordingTokenizer:
    """The real tokenizer, recording the longest text it is asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def encode_batch(self, texts, **options):
        self.longest = max([self.longest, *map(len, texts)])
        return self.tokenizer.encode_batch(texts, **options)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_long_line_reaches_the_tokenizer_in_bounded_pieces_with_the_same_ids(tmp_path, rng, monkeypatch):
    """A one-line document much longer than corpus.MAX_PIECE_CHARS is trained on and tokenized in pieces cut
    at whitespace (whole, a 30 MB line took 5 GB of memory): the same tokenizer file and the same ids."""
    from ufbert_jax.data import corpus, shards

    monkeypatch.setattr(corpus, "MAX_PIECE_CHARS", 300, raising=False)
    monkeypatch.setattr(shards, "MAX_BATCH_CHARS", 1000, raising=False)
    docs = [" ".join(rng.choice(WORDS, 3000)) + ".", "a short one."]  # the first: ~20k characters
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "long.txt").write_text("\n\n".join(docs) + "\n")
    trained_on, encoders = [], []
    train = shards.train_wordpiece
    monkeypatch.setattr(
        shards, "train_wordpiece", lambda texts, *a: train(trained_on.extend(texts) or trained_on, *a)
    )
    load = shards.load_tokenizer
    monkeypatch.setattr(
        shards, "load_tokenizer", lambda path: encoders.append(RecordingTokenizer(load(path))) or encoders[-1]
    )
    out = prepare_shards(
        [str(tmp_path / "corpus")], tmp_path / "shards", tmp_path / "tok.json", seq_len=SEQ, vocab_size=200,
        num_workers=1,
    )  # fmt: skip
    assert max(map(len, trained_on)) <= 300 and "".join(trained_on) == "".join(docs)
    assert 0 < max(encoder.longest for encoder in encoders) <= 300
    train_wordpiece(docs, 200, tmp_path / "whole.json")  # the same tokenizer as trained on whole documents
    assert (tmp_path / "tok.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    rows = np.stack([row for row in TokenShards(out)])
    stream = expected_stream(tmp_path / "tok.json", docs)  # each document encoded whole
    np.testing.assert_array_equal(rows.ravel(), stream[: rows.size])
