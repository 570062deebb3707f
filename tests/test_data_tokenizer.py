"""WordPiece training: normalisation of the original recipe, special tokens read back from the file,
byte-reproducible training, named file errors, the id bound checked against the model."""

import json

import pytest

from ufbert_jax.data.tokenizer import (
    SPECIAL_TOKENS,
    SpecialIds,
    check_vocabulary,
    id_bound,
    load_tokenizer,
    train_wordpiece,
)

TEXTS = [
    "Café Über naïve résumé façade.",
    "The QUICK brown fox jumps over the lazy dog, again and again!",
    "東京 is Tokyo; Ørsted and Œuvre are names.",
] * 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "sub" / "tokenizer.json"
    return path, train_wordpiece(TEXTS, 300, path)


def test_file_written_atomically_and_loadable(trained):
    path, tokenizer = trained
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json"]  # no temp file left
    assert load_tokenizer(path).to_str() == tokenizer.to_str()
    assert len(SPECIAL_TOKENS) < tokenizer.get_vocab_size() <= 300


def test_special_ids_match_the_file(trained):
    path, _ = trained
    vocab = json.loads(path.read_text())["model"]["vocab"]
    ids = SpecialIds.of(load_tokenizer(path))
    assert (ids.pad, ids.bos, ids.eos, ids.unk, ids.cls, ids.sep, ids.mask) == tuple(
        vocab[t] for t in SPECIAL_TOKENS
    )
    assert json.loads(path.read_text())["model"]["unk_token"] == "<unk>"


def test_normalisation_lowercase_strip_accents_drop_non_ascii(trained):
    _, tokenizer = trained
    assert tokenizer.normalizer.normalize_str("Café ÜBER naïve 東京 Øre") == "cafe uber naive  re"
    tokens = tokenizer.encode("Café NAÏVE 東京 façade", add_special_tokens=False).tokens
    assert "".join(t.removeprefix("##") for t in tokens) == "cafenaivefacade"
    assert all(t.isascii() for t in tokenizer.get_vocab())


def test_no_specials_added_and_wordpiece_decoding(trained):
    _, tokenizer = trained
    ids = tokenizer.encode("the quick brown fox", add_special_tokens=True).ids
    assert not set(ids) & SpecialIds.of(tokenizer).all()
    assert tokenizer.decode(ids) == "the quick brown fox"


def test_missing_special_token_is_named(tmp_path):
    from tokenizers import Tokenizer, models

    path = tmp_path / "bare.json"
    path.write_text(Tokenizer(models.WordPiece({"<unk>": 0, "a": 1}, unk_token="<unk>")).to_str())
    with pytest.raises(ValueError, match="<pad>"):
        SpecialIds.of(load_tokenizer(path))
    with pytest.raises(ValueError, match=rf"{path}: tokenizer lacks the special tokens \['<pad>'"):
        SpecialIds.of(load_tokenizer(path), path)


def test_vocab_size_too_small(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=3"):
        train_wordpiece(TEXTS, 3, tmp_path / "t.json")


# ---- robustness: reproducible training, named file errors, ids the model can embed -----------------------


def test_training_is_byte_reproducible(tmp_path, rng):
    """The trainer's hash-map order once gave other ids (and, on count ties, other merges) on every run."""
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), size=n)) for n in range(2, 12)]
    texts = [" ".join(rng.choice(words, size=30)) for _ in range(40)]
    files = [tmp_path / f"run{i}.json" for i in range(4)]
    for path in files:
        train_wordpiece(texts, 150, path)
    assert len({path.read_bytes() for path in files}) == 1
    tokenizer = load_tokenizer(files[0])
    assert tokenizer.get_added_tokens_decoder().keys() == set(range(len(SPECIAL_TOKENS)))  # only the 7
    assert sorted(tokenizer.get_vocab().values()) == list(range(tokenizer.get_vocab_size()))  # no gaps
    vocab = tokenizer.get_vocab()
    assert all(t[2:] in vocab for t in vocab if t.startswith("##") and len(t) == 3)  # no unseen "##c"
    assert "".join(t.removeprefix("##") for t in tokenizer.encode(texts[0]).tokens) == texts[0].replace(
        " ", ""
    )


@pytest.mark.parametrize("content", [b"", b'{"version": "1.0", "trunc', b"\xff\xfe\x00binary"])
def test_unreadable_tokenizer_file_is_named(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{path}: not a `tokenizers` JSON file"):
        load_tokenizer(path)


def test_ids_beyond_the_model_vocabulary_are_refused(tmp_path):
    """A vocabulary with a gap: 8 tokens, but one with id 70000 (get_vocab_size() says 8)."""
    from tokenizers import Tokenizer, models

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)} | {"far": 70000}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    assert tokenizer.get_vocab_size() == 8 and id_bound(tokenizer) == 70001
    with pytest.raises(ValueError, match=r"somewhere: the tokenizer's ids reach 70000 \(8 tokens\)"):
        check_vocabulary(tokenizer, 32768, "somewhere")
    check_vocabulary(tokenizer, 70001, "somewhere")
