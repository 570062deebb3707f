"""WordPiece training: normalisation of the original recipe, special tokens read back from the file."""

import json

import pytest

from ufbert_jax.data.tokenizer import SPECIAL_TOKENS, SpecialIds, load_tokenizer, train_wordpiece

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


def test_vocab_size_too_small(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=3"):
        train_wordpiece(TEXTS, 3, tmp_path / "t.json")
