"""GLUE: TSV layouts and errors, the Hub source, metrics against scikit-learn/scipy, encoding,
the vocabulary check, a short fine-tune that must learn, and eval_glue.py end to end (in process and
its documented command line).

Synthetic GLUE directories are written here in each task's original layout; the tiny tokenizer and
workdir are built from scratch (WordPiece on synthetic words, a freshly initialised tiny-fff MaskedLM), so
nothing depends on the pretraining code.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from flax import nnx
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from configs import glue as glue_config_file
from ufbert_jax import config
from ufbert_jax import workdir as workdir_lib
from ufbert_jax.data import tokenizer as tokenizer_lib
from ufbert_jax.data.tokenizer import SPECIAL_TOKENS, SpecialIds
from ufbert_jax.glue import report, scoring
from ufbert_jax.glue.finetune import Pretrained, Recipe, evaluate_workdir, finetune_task, run_glue
from ufbert_jax.glue.tasks import TASKS, Skipped, Split, TaskData, get_task, load_hub, load_local, read_tsv
from ufbert_jax.model import MaskedLM

WORDS = (*(f"w{i}" for i in range(40)), "zebra", "quokka")
MARKER = "zebra"  # the easy task: label 1 iff the marker word is present
REAL_GLUE = Path(os.environ.get("UFBERT_GLUE_DIR", Path(__file__).resolve().parents[2] / "shared/data/glue"))
REPO = Path(__file__).resolve().parents[1]


def sentence(rng: np.random.Generator, low: int = 2, high: int = 9) -> str:
    return " ".join(rng.choice(WORDS[:40], rng.integers(low, high)))


def marker_sentence(rng: np.random.Generator, label: int) -> str:
    words = sentence(rng).split()
    if label:
        words.insert(int(rng.integers(len(words) + 1)), MARKER)
    return " ".join(words)


# ---- synthetic GLUE directory, one writer per original layout --------------------------------------------


def _write(path: Path, header: list[str] | None, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + rows
    path.write_text(("\ufeff" if bom else "") + "".join("\t".join(r) + "\n" for r in lines), encoding="utf-8")


def _labels_for(task: str, rng: np.random.Generator, n: int) -> list[str]:
    spec = TASKS[task]
    if spec.labels is None:
        return [f"{x:.3f}" for x in rng.uniform(0, 5, n)]
    return [spec.labels[i] for i in rng.integers(len(spec.labels), size=n)]


def _rows(
    task: str, split: str, rng: np.random.Generator, n: int
) -> tuple[list[str] | None, list[list[str]]]:
    """Header (None for CoLA) and rows of one split in the task's original GLUE layout. Text contains an
    unbalanced quote on purpose (GLUE must be read with QUOTE_NONE)."""
    a = [sentence(rng) + ' "' for _ in range(n)]
    b = [sentence(rng) for _ in range(n)]
    y = _labels_for(task, rng, n)
    idx = [str(i) for i in range(n)]
    if task == "cola":
        return None, [["gj04", y[i], "*" if y[i] == "0" else "", a[i]] for i in range(n)]
    if task == "sst2":
        return ["sentence", "label"], [[a[i], y[i]] for i in range(n)]
    if task == "mrpc":
        return ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [
            [y[i], str(1000 + i), str(2000 + i), a[i], b[i]] for i in range(n)
        ]
    if task == "stsb":
        header = ["index", "genre", "filename", "year", "old_index", "source1", "source2"]
        return [*header, "sentence1", "sentence2", "score"], [
            [idx[i], "main-captions", "MSRvid", "2012test", "0001", "none", "none", a[i], b[i], y[i]]
            for i in range(n)
        ]
    if task == "qqp":
        return ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], [
            [idx[i], "1", "2", a[i], b[i], y[i]] for i in range(n)
        ]
    if task == "mnli":
        parses = ["sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse", "sentence2_parse"]
        extra = ["label1"] if split == "train" else ["label1", "label2", "label3", "label4", "label5"]
        header = [
            "index",
            "promptID",
            "pairID",
            "genre",
            *parses,
            "sentence1",
            "sentence2",
            *extra,
            "gold_label",
        ]
        return header, [
            [idx[i], "1", "1e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a[i], b[i]]
            + [y[i]] * len(extra)
            + [y[i]]
            for i in range(n)
        ]
    first, second = ("question", "sentence") if task == "qnli" else ("sentence1", "sentence2")
    return ["index", first, second, "label"], [[idx[i], a[i], b[i], y[i]] for i in range(n)]


def write_glue(root: Path, rng: np.random.Generator, tasks=tuple(TASKS), n: int = 12) -> dict:
    """Writes each task's train and dev files under `root`; returns {(task, split): (texts, labels)}
    as written, the expectation the readers are checked against."""
    written = {}
    for task in tasks:
        spec = TASKS[task]
        for stem, count in [("train", n), *((d.tsv_stem, n // 2 + 1) for d in spec.dev_splits)]:
            header, rows = _rows(task, stem, rng, count)
            _write(root / spec.directory / f"{stem}.tsv", header, rows, bom=task == "mrpc")
            columns = header or list(("source", "label", "original_label", "sentence"))
            texts = tuple([r[columns.index(c)] for r in rows] for c in spec.text_columns)
            written[task, stem] = (texts, [r[columns.index(spec.label_column)] for r in rows])
    return written


# ---- tokenizer and workdir fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A tiny WordPiece with the project's special tokens, trained on the synthetic words."""
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=list(SPECIAL_TOKENS))
    tok.train_from_iterator([" ".join(WORDS)] * 20 + ['" , .'], trainer)
    return tok


def make_workdir(path: Path, tokenizer: Tokenizer, vocab_size: int | None = None) -> Path:
    """model.json (tiny-fff, masked FFF), tokenizer.json and one params step of a fresh MaskedLM."""
    cfg = config.preset("tiny-fff", vocab_size=vocab_size or tokenizer.get_vocab_size(), max_len=64)
    workdir_lib.save_config(path, cfg)
    tokenizer.save(str(workdir_lib.tokenizer_path(path)))
    workdir_lib.save_params(path, 0, MaskedLM(cfg, nnx.Rngs(0)))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer) -> Path:
    return make_workdir(tmp_path_factory.mktemp("workdir"), tokenizer)


def recipe(**changes) -> Recipe:
    values = dict(
        epochs=1, batch_size=16, eval_batch_size=32, lr=4e-5, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.0,
        warmup_fraction=0.1, dropout=0.1, max_len=32, buckets=(32,), max_train_examples=0,
        fff_impl="masked", seed=0,
    )  # fmt: skip
    return Recipe(**{**values, **changes})


# ---- reading -------------------------------------------------------------------------------------------


def test_every_layout_reads_back_what_was_written(tmp_path, rng):
    written = write_glue(tmp_path, rng)
    for task, spec in TASKS.items():
        data = load_local(spec, tmp_path)
        assert isinstance(data, TaskData), data
        splits = {"train": data.train, **{d.tsv_stem: data.dev[d.name] for d in spec.dev_splits}}
        assert set(data.dev) == {d.name for d in spec.dev_splits}
        for stem, split in splits.items():
            texts, labels = written[task, stem]
            assert split.texts == texts, (task, stem)
            if spec.labels is None:
                np.testing.assert_allclose(split.labels, [float(x) for x in labels], atol=1e-6)
            else:
                assert [spec.labels[i] for i in split.labels] == labels, (task, stem)


def test_mnli_has_matched_and_mismatched_dev_rows(tmp_path, rng):
    write_glue(tmp_path, rng, tasks=("mnli",))
    data = load_local(get_task("MNLI"), tmp_path)
    assert list(data.dev) == ["mnli-m", "mnli-mm"]
    assert data.dev["mnli-m"].source.endswith("dev_matched.tsv")
    assert data.dev["mnli-mm"].source.endswith("dev_mismatched.tsv")


def test_malformed_row_names_file_and_line(tmp_path, rng):
    header, rows = _rows("rte", "train", rng, 5)
    rows[2] = rows[2][:3]  # data line 3 is file line 4 (after the header)
    path = tmp_path / "RTE" / "train.tsv"
    _write(path, header, rows)
    with pytest.raises(ValueError, match=rf"{path}:4: malformed row with 3 tab-separated fields, expected 4"):
        read_tsv(TASKS["rte"], path)


def test_header_without_the_needed_column_is_an_error(tmp_path):
    path = tmp_path / "train.tsv"
    _write(path, ["sentence", "labels"], [["a b", "1"]])
    with pytest.raises(ValueError, match=rf"{path}:1: columns \['label'\] not found"):
        read_tsv(TASKS["sst2"], path)


@pytest.mark.parametrize(
    ("task", "bad", "message"),
    [
        ("rte", "maybe", "label 'maybe' not in the label set"),
        ("cola", "2", "label '2' not in the label set"),
        ("stsb", "7.5", "score 7.5 outside"),
        ("stsb", "high", "label 'high' is not a number"),
    ],
)
def test_label_outside_the_task_set_is_an_error(tmp_path, rng, task, bad, message):
    header, rows = _rows(task, "dev", rng, 4)
    label_at = (header or ["source", "label", "original_label", "sentence"]).index(TASKS[task].label_column)
    rows[1][label_at] = bad
    path = tmp_path / "dev.tsv"
    _write(path, header, rows)
    line = 2 if header is None else 3
    with pytest.raises(ValueError, match=rf"{path}:{line}: {task} {message}"):
        read_tsv(TASKS[task], path)


@pytest.mark.parametrize(
    ("task", "stem", "content", "message"),
    [
        ("rte", "dev", b"index\tsentence1\tsentence2\tlabel\n", "no examples, only a header"),
        ("rte", "train", b"index\tsentence1\tsentence2\tlabel\n", "no examples, only a header"),
        ("cola", "dev", b"", "empty file; expected a GLUE cola TSV"),
        ("sst2", "train", b"\n\n", "empty file; expected a GLUE sst2 TSV"),
        ("rte", "dev", b"index\tsentence1\xff\xfe\n\x89PNG", "not UTF-8 text"),
        ("rte", "dev", b"index\tsentence1\tsentence2\tlabel\n0\ta\x00\tb\tentailment\n", "has NUL bytes"),
    ],
    ids=["header-only-dev", "header-only-train", "empty", "blank", "binary", "nul"],
)
def test_unusable_files_name_the_file_and_the_problem(tmp_path, rng, task, stem, content, message):
    """Once "labels (0,) and predictions (0,) must be equal", "non-finite training loss nan" or a bare
    UnicodeDecodeError, long after the file was read."""
    write_glue(tmp_path, rng, tasks=(task,))
    path = tmp_path / TASKS[task].directory / f"{stem}.tsv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{path}: {message}"):
        load_local(TASKS[task], tmp_path)


def test_a_row_that_swallows_the_file_is_named(tmp_path, rng):
    header, rows = _rows("rte", "train", rng, 3)
    path = tmp_path / "train.tsv"
    _write(path, header, rows)
    path.write_text(path.read_text() + "x" * 200_000 + "\n")  # over csv's field size limit
    with pytest.raises(ValueError, match=rf"{path}:5: field larger than field limit"):
        read_tsv(TASKS["rte"], path)


def test_results_are_written_with_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        paths = report.write({"workdir": "w", "tasks": {}, "averages": scoring.averages({}, {})}, tmp_path)
    finally:
        os.umask(old)
    assert [oct(stat.S_IMODE(path.stat().st_mode)) for path in paths] == ["0o644", "0o644"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]  # no temp files


def test_missing_files_skip_the_task_with_the_reason(tmp_path, rng):
    write_glue(tmp_path, rng, tasks=("qnli",))
    (tmp_path / "QNLI" / "train.tsv").unlink()
    skipped = load_local(TASKS["qnli"], tmp_path)
    assert skipped == Skipped("qnli", f"missing {tmp_path / 'QNLI' / 'train.tsv'}")
    assert "MNLI/dev_mismatched.tsv" in load_local(TASKS["mnli"], tmp_path).reason


def test_hub_source_maps_class_indices_to_the_same_labels():
    rows = {
        "train": [
            {"premise": "p0", "hypothesis": "h0", "label": 2},
            {"premise": "p1", "hypothesis": "h1", "label": 0},
        ],
        "validation_matched": [{"premise": "p", "hypothesis": "h", "label": 1}],
        "validation_mismatched": [{"premise": "q", "hypothesis": "g", "label": 0}],
    }
    calls = []

    def fake_load(path, name, split):
        calls.append((path, name, split))
        return rows[split]

    data = load_hub(TASKS["mnli"], load_dataset=fake_load)
    assert calls[0] == ("nyu-mll/glue", "mnli", "train")
    assert data.train.texts == (["p0", "p1"], ["h0", "h1"])
    assert [TASKS["mnli"].labels[i] for i in data.train.labels] == ["contradiction", "entailment"]
    assert data.dev["mnli-m"].labels.tolist() == [1] and data.dev["mnli-mm"].texts == (["q"], ["g"])


def test_hub_source_offline_is_skipped_and_unlabelled_rows_are_errors():
    def offline(path, name, split):
        raise ConnectionError("no network")

    skipped = load_hub(TASKS["rte"], load_dataset=offline)
    assert isinstance(skipped, Skipped) and "no network" in skipped.reason
    with pytest.raises(ValueError, match=r"nyu-mll/glue/rte:train has no examples"):
        load_hub(TASKS["rte"], load_dataset=lambda path, name, split: [])
    test_split = [{"sentence1": "a", "sentence2": "b", "label": -1}]
    with pytest.raises(ValueError, match=r"nyu-mll/glue/rte train row 0: label -1 not a class index"):
        load_hub(TASKS["rte"], load_dataset=lambda path, name, split: test_split)


@pytest.mark.skipif(not REAL_GLUE.is_dir(), reason=f"real GLUE data not found at {REAL_GLUE}")
def test_real_glue_files_parse_with_the_official_row_counts():
    official = {
        "cola": (8551, {"cola": 1043}),
        "sst2": (67349, {"sst2": 872}),
        "mrpc": (3668, {"mrpc": 408}),
        "stsb": (5749, {"stsb": 1500}),
        "rte": (2490, {"rte": 277}),
        "wnli": (635, {"wnli": 71}),
    }
    for task, (train_rows, dev_rows) in official.items():
        data = load_local(TASKS[task], REAL_GLUE)
        assert isinstance(data, TaskData), data
        assert len(data.train) == train_rows
        assert {name: len(split) for name, split in data.dev.items()} == dev_rows
    assert read_tsv(TASKS["qnli"], REAL_GLUE / "QNLI" / "dev.tsv").labels.shape == (5463,)
    for task in ("mnli", "qqp", "qnli"):  # files over 4 MiB are absent from the snapshot (MANIFEST.md)
        assert isinstance(load_local(TASKS[task], REAL_GLUE), Skipped)


# ---- metrics ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3])
def test_classification_metrics_match_sklearn(rng, classes):
    labels = rng.integers(classes, size=500)
    predictions = np.where(rng.random(500) < 0.6, labels, rng.integers(classes, size=500))
    assert scoring.accuracy(labels, predictions) == pytest.approx(
        100 * sklearn.metrics.accuracy_score(labels, predictions)
    )
    assert scoring.matthews(labels, predictions) == pytest.approx(
        100 * sklearn.metrics.matthews_corrcoef(labels, predictions)
    )
    if classes == 2:
        assert scoring.f1(labels, predictions) == pytest.approx(
            100 * sklearn.metrics.f1_score(labels, predictions)
        )


def test_correlations_match_scipy_with_ties(rng):
    labels = rng.integers(0, 6, size=300).astype(np.float32)  # many ties, like STS-B's rounded scores
    predictions = np.round(labels + rng.normal(0, 2, size=300), 1).astype(np.float32)
    assert scoring.pearson(labels, predictions) == pytest.approx(
        100 * scipy.stats.pearsonr(labels, predictions)[0]
    )
    assert scoring.spearman(labels, predictions) == pytest.approx(
        100 * scipy.stats.spearmanr(labels, predictions)[0]
    )


def test_degenerate_metrics_score_zero():
    labels = np.array([0, 1, 1, 0])
    assert scoring.matthews(labels, np.zeros(4, int)) == 0.0
    assert scoring.f1(np.zeros(4, int), np.zeros(4, int)) == 0.0
    assert scoring.pearson(labels.astype(float), np.full(4, 2.5)) == 0.0
    with pytest.raises(ValueError, match="must be equal"):
        scoring.accuracy(labels, labels[:3])


def test_averages_count_mnli_twice_for_cramming_and_once_for_glue():
    rows = {
        "cola": {"matthews": 10.0},
        "mrpc": {"f1": 80.0, "accuracy": 70.0},
        "mnli-m": {"accuracy": 60.0},
        "mnli-mm": {"accuracy": 62.0},
        "wnli": {"accuracy": 50.0},
    }
    tasks = {"cola": "cola", "mrpc": "mrpc", "mnli-m": "mnli", "mnli-mm": "mnli", "wnli": "wnli"}
    averages = scoring.averages(rows, tasks)
    assert averages["cramming"]["value"] == pytest.approx((10 + 80 + 60 + 62) / 4)
    assert averages["cramming_without_cola"]["value"] == pytest.approx((80 + 60 + 62) / 3)
    assert averages["glue"]["value"] == pytest.approx((10 + 75 + 61 + 50) / 4)
    assert "wnli" not in averages["cramming"]["rows"]
    assert scoring.averages({}, {})["glue"]["value"] is None


# ---- encoding --------------------------------------------------------------------------------------------


def _longest_first_by_loop(len_a, len_b, budget):
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_longest_first_matches_token_by_token_truncation():
    for budget in range(0, 12):
        for len_a in range(15):
            for len_b in range(15):
                expected = _longest_first_by_loop(len_a, len_b, budget)
                assert tokenizer_lib.longest_first(len_a, len_b, budget) == expected, (len_a, len_b, budget)


def test_single_and_pair_layouts_follow_the_pretraining_tokenizer(tokenizer):
    special = SpecialIds.of(tokenizer)
    ids = {w: tokenizer.token_to_id(w) for w in WORDS}
    single = tokenizer_lib.encode_texts(tokenizer, (["w1 w2 w3"],), max_len=16)
    assert single[0].tolist() == [ids["w1"], ids["w2"], ids["w3"], special.sep]
    pair = tokenizer_lib.encode_texts(tokenizer, (["w1 w2"], ["w3"]), max_len=16)
    assert pair[0].tolist() == [special.cls, ids["w1"], ids["w2"], special.sep, ids["w3"], special.sep]


def test_truncation_keeps_prefixes_within_max_len(tokenizer):
    special = SpecialIds.of(tokenizer)
    long_a, long_b = " ".join(WORDS[:20]), " ".join(WORDS[20:30])
    single = tokenizer_lib.encode_texts(tokenizer, ([long_a],), max_len=8)[0]
    assert single.tolist() == [tokenizer.token_to_id(w) for w in WORDS[:7]] + [special.sep]
    # 9 text tokens: a 5, b 4
    pair = tokenizer_lib.encode_texts(tokenizer, ([long_a], [long_b]), max_len=12)[0]
    expected = [special.cls, *[tokenizer.token_to_id(w) for w in WORDS[:5]], special.sep]
    expected += [*[tokenizer.token_to_id(w) for w in WORDS[20:24]], special.sep]
    assert pair.tolist() == expected


# ---- workdir, fine-tuning, end to end ----------------------------------------------------------------------


def test_vocabulary_mismatch_is_an_error(tmp_path, tokenizer):
    path = make_workdir(tmp_path, tokenizer, vocab_size=tokenizer.get_vocab_size() - 8)
    with pytest.raises(
        ValueError, match=r"the tokenizer's ids reach \d+ \(\d+ tokens\) but the model.s vocab_size"
    ):
        Pretrained.load(path)


def test_one_epoch_beats_chance_on_an_easy_task(workdir, rng):
    def split(n):
        labels = rng.integers(2, size=n)
        return [marker_sentence(rng, y) for y in labels], labels.astype(np.int32)

    (train_texts, train_labels), (dev_texts, dev_labels) = split(1024), split(200)
    data = TaskData(
        TASKS["sst2"],
        Split((train_texts,), train_labels, "synthetic"),
        {"sst2": Split((dev_texts,), dev_labels, "dev")},
    )
    record = finetune_task(data, Pretrained.load(workdir), recipe(lr=3e-3))
    assert record["steps"] == 64
    assert record["dev"]["sst2"]["metrics"]["accuracy"] > 80.0, record


def glue_config(**fields) -> ml_collections.ConfigDict:
    """configs/glue.py with `fields` set (dotted names for nested ones, "task_overrides.rte.lr")."""
    cfg = glue_config_file.get_config()
    for name, value in fields.items():
        *parents, leaf = name.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


# The shapes of the fine-tuning test above, whose compiled steps these reuse (one graph, one bucket).
SMALL_RECIPE = dict(epochs=1, max_len=32, buckets=(32,), eval_batch_size=32)
SMALL_FLAGS = [
    "--config.epochs=1",
    "--config.max_len=32",
    "--config.buckets=(32,)",
    "--config.eval_batch_size=32",
]


def test_eval_glue_end_to_end_writes_results(tmp_path, workdir, rng):
    glue_dir = tmp_path / "glue"
    write_glue(glue_dir, rng, tasks=("mrpc", "rte", "wnli"), n=40)
    out = tmp_path / "out"
    cfg = glue_config(
        tasks="mrpc,qqp,rte,wnli",
        **SMALL_RECIPE,
        **{"task_overrides.mrpc.epochs": 2, "task_overrides.rte.lr": 1e-4},
    )
    results = evaluate_workdir(cfg, workdir, glue_dir, out)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["source"] == str(glue_dir)
    assert saved["tasks"]["qqp"]["status"] == "skipped" and "QQP/train.tsv" in saved["tasks"]["qqp"]["reason"]
    assert saved["tasks"]["mrpc"]["recipe"]["epochs"] == 2 and saved["tasks"]["rte"]["recipe"]["lr"] == 1e-4
    assert saved["tasks"]["wnli"]["recipe"]["epochs"] == 1 and saved["tasks"]["mrpc"]["steps"] == 2 * 3
    assert saved["tasks"]["rte"]["dev"]["rte"]["examples"] == 21
    assert saved["averages"]["cramming"]["rows"] == ["mrpc", "rte"]
    assert saved["averages"]["glue"]["rows"] == ["mrpc", "rte", "wnli"]
    table = (out / "results.md").read_text()
    assert table.endswith(report.markdown(saved)) and "| qqp | - | - | skipped:" in table


def test_results_of_other_tasks_in_out_are_kept_and_averaged_with_the_new_ones(tmp_path, workdir, rng):
    glue_dir, out = tmp_path / "glue", tmp_path / "out"
    write_glue(glue_dir, rng, tasks=("wnli", "stsb"), n=20)
    bad_stsb_row(glue_dir)
    evaluate_workdir(glue_config(tasks="wnli,stsb", **SMALL_RECIPE), workdir, glue_dir, out)
    first = json.loads((out / "results.json").read_text())
    results = evaluate_workdir(glue_config(tasks="qqp", **SMALL_RECIPE), workdir, glue_dir, out)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    # wnli kept as it was, qqp added; the failed stsb is not carried over (its run reported it)
    assert list(saved["tasks"]) == ["wnli", "qqp"] and saved["tasks"]["wnli"] == first["tasks"]["wnli"]
    assert saved["tasks"]["qqp"]["status"] == "skipped" and saved["averages"]["glue"]["rows"] == ["wnli"]
    assert "| wnli | wnli |" in (out / "results.md").read_text()
    other = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({**other, "workdir": str(tmp_path / "elsewhere")}))
    with pytest.raises(ValueError, match=rf"{out / 'results.json'} holds the results of another workdir"):
        evaluate_workdir(glue_config(tasks="qqp", **SMALL_RECIPE), workdir, glue_dir, out)


def test_bad_recipe_values_fail_before_any_training(workdir, tmp_path):
    with pytest.raises(ValueError, match="epochs=0 must be >= 1"):
        evaluate_workdir(
            glue_config(tasks="rte", **{"task_overrides.rte.epochs": 0}), workdir, tmp_path, tmp_path
        )
    with pytest.raises(ValueError, match="unknown GLUE task 'cloa'"):
        evaluate_workdir(glue_config(tasks="rte,cloa"), workdir, tmp_path, tmp_path)
    assert not (tmp_path / "results.json").exists()


def run_script(*args: str) -> subprocess.CompletedProcess:
    """Runs a top-level script of the repo (the documented command line) in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def bad_stsb_row(glue_dir: Path) -> Path:
    """Replaces the score of STS-B dev.tsv's line 4 with a word; returns the file."""
    path = glue_dir / "STS-B" / "dev.tsv"
    lines = path.read_text().splitlines()
    lines[3] = "\t".join([*lines[3].split("\t")[:-1], "high"])
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_task_is_reported_and_finished_ones_are_on_disk_at_once(tmp_path, workdir, rng):
    glue_dir, out = tmp_path / "glue", tmp_path / "out"
    write_glue(glue_dir, rng, tasks=("wnli", "stsb"), n=20)
    path = bad_stsb_row(glue_dir)
    on_disk = []

    def source(spec):  # records what results.json holds when each task starts
        saved = out / "results.json"
        on_disk.append(sorted(json.loads(saved.read_text())["tasks"]) if saved.exists() else [])
        return load_local(spec, glue_dir)

    pretrained = Pretrained.load(workdir)
    results = run_glue(
        glue_config(tasks="wnli,stsb", **SMALL_RECIPE),
        pretrained,
        source,
        on_update=lambda r: report.write(r, out),
    )
    assert on_disk == [[], ["wnli"]]
    assert results["tasks"]["wnli"]["status"] == "ok"
    assert results["tasks"]["stsb"] == {
        "status": "failed",
        "error": f"ValueError: {path}:4: stsb label 'high' is not a number",
    }
    assert results["averages"]["glue"]["rows"] == ["wnli"]


def test_documented_command_line(tmp_path, workdir, rng):
    """The Makefile's form (--workdir=W, --glue_dir DIR, --config.tasks=...) with a per-task flag: a task
    with a bad row is reported in results.json and the table, the exit status is 1. (No task trains: the
    command line is what is tested, fine-tuning is tested in process above.)"""
    glue_dir, out = tmp_path / "glue", tmp_path / "out"
    write_glue(glue_dir, rng, tasks=("stsb",), n=20)
    path = bad_stsb_row(glue_dir)
    done = run_script(
        "eval_glue.py", f"--workdir={workdir}", "--glue_dir", str(glue_dir), f"--out={out}",
        "--config.tasks=qqp,stsb", *SMALL_FLAGS, "--config.task_overrides.stsb.epochs=2",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    saved = json.loads((out / "results.json").read_text())
    assert saved["source"] == str(glue_dir) and saved["tasks"]["qqp"]["status"] == "skipped"
    assert saved["tasks"]["stsb"]["status"] == "failed" and f"{path}:4:" in saved["tasks"]["stsb"]["error"]
    assert "failed tasks: stsb" in done.stdout and "| stsb | - | - | FAILED:" in done.stdout
    done = run_script(
        "eval_glue.py", f"--workdir={workdir}", "--hub", "--config.task_overrides.cloa.epochs=1"
    )
    assert done.returncode != 0 and 'Did you mean "cola"' in done.stderr
