"""Corpus readers: format detection, cleaning, errors, and the hf:/tfds:/path specs."""

import hashlib
import os
from pathlib import Path

import pytest

from ufbert_jax.data import corpus
from ufbert_jax.data.corpus import documents_from_spec, hf_documents, local_documents, tfds_documents

SHARED_DATA = Path(os.environ.get("UFBERT_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))
REPO = Path(__file__).parents[1]

WIKI = """<doc id="12" url="https://en.wikipedia.org/wiki?curid=12" title="Anarchism">
Anarchism

Anarchism is a political philosophy.
It has many schools.
</doc>
<doc id="25" url="https://en.wikipedia.org/wiki?curid=25" title="Autism">
Autism

Autism is a disorder of neural development.
</doc>
<doc id="39" url="https://en.wikipedia.org/wiki?curid=39" title="Empty">
Empty

</doc>
"""

GUTENBERG = (
    "The Project Gutenberg EBook of Tiny, by Nobody\r\n"
    "\r\n"
    "This eBook is for the use of anyone anywhere at no cost\r\n"
    "\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK TINY ***\r\n"
    "\r\n"
    "CHAPTER I\r\n"
    "\r\n"
    "It was a dark and\r\n"
    "stormy night.\r\n"
    "\r\n"
    "\r\n"
    "The end came\r\n"
    "soon.\r\n"
    "\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK TINY ***\r\n"
    "\r\n"
    "Project Gutenberg-tm License: Redistribution is subject to the trademark license.\r\n"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def test_wikiextractor_articles_without_titles(tmp_path):
    docs = list(local_documents(write(tmp_path / "wiki_00", WIKI)))
    assert docs == [
        "Anarchism is a political philosophy.\nIt has many schools.",
        "Autism is a disorder of neural development.",
    ]


def test_gutenberg_body_only_crlf_normalised_paragraphs_unwrapped(tmp_path):
    docs = list(local_documents(write(tmp_path / "book.txt", GUTENBERG)))
    assert docs == ["CHAPTER I\nIt was a dark and stormy night.\nThe end came soon."]


def test_gutenberg_old_style_markers_and_lone_cr(tmp_path):
    text = "header\r***START OF THE PROJECT GUTENBERG EBOOK X***\rline one\rline two\r***END OF IT***\rfooter"
    assert list(local_documents(write(tmp_path / "old.txt", text))) == ["line one line two"]


def test_plain_text_blank_line_separated(tmp_path):
    text = "first doc line one\nline two\n\n  \n\nsecond doc\n\n\n"
    assert list(local_documents(write(tmp_path / "plain.txt", text))) == [
        "first doc line one\nline two",
        "second doc",
    ]


def test_directory_walk_sorted_text_files_only(tmp_path):
    write(tmp_path / "b" / "wiki_01", WIKI)
    write(tmp_path / "a.txt", "alpha\n\nbeta")
    write(tmp_path / "README.md", "not corpus text")
    write(tmp_path / "SHA256SUMS", "abc  a.txt")
    write(tmp_path / ".hidden" / "x.txt", "hidden")
    write(tmp_path / "data.bz2", "compressed")
    docs = list(local_documents(tmp_path))
    assert [d.split()[0] for d in docs] == ["alpha", "beta", "Anarchism", "Autism"]


def test_several_paths_in_order(tmp_path):
    a, b = write(tmp_path / "a.txt", "from a"), write(tmp_path / "b.txt", "from b")
    assert list(local_documents([b, a])) == ["from b", "from a"]


def test_missing_path_is_named_before_iteration(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        local_documents([tmp_path, missing])


@pytest.mark.parametrize("content", [None, "  \n\n \r\n"])
def test_empty_corpus_is_named(tmp_path, content):
    folder = tmp_path / "empty_corpus"
    folder.mkdir()
    if content is not None:
        write(folder / "blank.txt", content)
    with pytest.raises(ValueError, match=r"empty_corpus.*no documents"):
        list(local_documents(folder))


def test_spec_paths(tmp_path, monkeypatch):
    write(tmp_path / "c.txt", "one\n\ntwo")
    assert list(documents_from_spec(str(tmp_path))) == ["one", "two"]
    assert list(documents_from_spec(f"path:{tmp_path}")) == ["one", "two"]
    monkeypatch.chdir(tmp_path)
    assert list(documents_from_spec("c.txt")) == ["one", "two"]


def test_spec_unknown_scheme():
    with pytest.raises(ValueError, match=r"'s3'.*expected one of \('path', 'hf', 'tfds'\)"):
        documents_from_spec("s3:bucket/corpus")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf:wikimedia/wikipedia:20231101.en/train", ("wikimedia/wikipedia", "train", "text", "20231101.en")),
        ("hf:EleutherAI/pile/validation", ("EleutherAI/pile", "validation", "text", None)),
        ("hf:EleutherAI/pile", ("EleutherAI/pile", "train", "text", None)),
        ("hf:bookcorpus:plain_text", ("bookcorpus", "train", "text", "plain_text")),
    ],
)
def test_spec_hf_parsing(monkeypatch, spec, expected):
    calls = []
    monkeypatch.setattr(corpus, "hf_documents", lambda *args, **kw: calls.append((*args, kw["config"])))
    documents_from_spec(spec)
    assert calls == [expected]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tfds:wikipedia/20230601.en/train", ("wikipedia/20230601.en", "train")),
        ("tfds:mnist/test", ("mnist", "test")),
        ("tfds:mnist", ("mnist", "train")),
    ],
)
def test_spec_tfds_parsing(monkeypatch, spec, expected):
    calls = []
    monkeypatch.setattr(corpus, "tfds_documents", lambda *args: calls.append(args))
    documents_from_spec(spec)
    assert calls == [expected]


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def test_hf_documents_local_jsonl_offline(tmp_path, hf_offline):
    path = write(tmp_path / "docs.jsonl", '{"body": "first doc", "id": 1}\n{"body": "second doc", "id": 2}\n')
    assert list(hf_documents(str(path), "train", "body")) == ["first doc", "second doc"]
    with pytest.raises(KeyError, match=r"'text'.*\['body', 'id'\]"):
        list(hf_documents(str(path), "train", "text"))


def test_hf_spec_local_text_file_offline(tmp_path, hf_offline):
    path = write(tmp_path / "lines.txt", "line one\nline two\n")
    assert list(documents_from_spec(f"hf:{path}")) == ["line one", "line two"]


def test_tfds_documents_from_a_local_array_record_build(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class UfbertTinyCorpus(tfds.core.GeneratorBasedBuilder):
        """Three documents, built locally: TFDS's data-source path without any download."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(3):
                yield i, {"text": f"document {i} caf\u00e9"}

    UfbertTinyCorpus(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    docs = sorted(tfds_documents("ufbert_tiny_corpus", "train", "text", data_dir=tmp_path))
    assert docs == [f"document {i} caf\u00e9" for i in range(3)]


def _shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set UFBERT_SHARED_DATA to the data folder)")
    return path


def test_shared_wikipedia_file_yields_every_nonempty_article():
    path = _shared_file("corpus/wikipedia_en_2015_wikiextractor/text/AA/wiki_00")
    text = path.read_text(encoding="utf-8")
    docs = list(local_documents(path))
    assert 0 < len(docs) <= text.count("<doc ") == text.count("</doc>")
    assert not any("<doc" in d or "</doc>" in d for d in docs)


def test_sample_corpus_is_byte_identical_to_the_shared_books():
    sums = _shared_file("SHA256SUMS").read_text().splitlines()
    upstream = {line.split("  ", 1)[0] for line in sums if "gutenberg_top100_authors_subset/books/" in line}
    books = sorted((REPO / "data" / "sample").glob("*.txt"))
    assert len(books) >= 3
    for book in books:
        assert hashlib.sha256(book.read_bytes()).hexdigest() in upstream, book.name
    docs = list(local_documents(REPO / "data" / "sample"))
    assert len(docs) == len(books)
    assert not any("Project Gutenberg" in d[:2000] or "\r" in d for d in docs)


# ---- robustness: files that are not text are named, never read as noise -----------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x7fELF\x02\x01\x01\x00\x00\x00 binary", "is not text: it has NUL bytes"),
        (
            "Bonjour, ça va très bien à Noël. ".encode("latin-1") * 20,
            "is not UTF-8 text: 80 of its 660 bytes",
        ),
        ("text".encode("utf-16"), "is not text: it has NUL bytes"),
    ],
    ids=["binary", "latin-1", "utf-16"],
)
def test_a_file_that_is_not_text_is_named(tmp_path, content, message):
    path = tmp_path / "corpus" / "wiki_00"  # suffix-less: a directory walk reads it
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"corpus file {path} {message}"):
        list(local_documents(tmp_path / "corpus"))


def test_a_stray_undecodable_byte_is_tolerated(tmp_path):
    path = write(tmp_path / "a.txt", "Plain English text. " * 100)
    path.write_bytes(path.read_bytes() + b"\xff")
    assert list(local_documents(path)) == [("Plain English text. " * 100) + "\ufffd"]


def test_a_record_whose_text_is_not_a_string_is_named():
    with pytest.raises(TypeError, match=r"hf dataset x/train: field 'text' is a int, expected text"):
        corpus._field_text({"text": 3}, "text", "hf dataset x/train")
