"""GLUE task specs and their two sources: the original TSV layout on disk, and the Hub's `nyu-mll/glue`.

Label convention: a classification label is its index in `TaskSpec.labels`, which lists the labels in the
order of the Hub's ClassLabel names, so both sources agree (MNLI: entailment 0, neutral 1, contradiction 2).
STS-B is regression: its label is the float similarity score in [0, 5].

The TSV files are read the way the GLUE benchmark wrote them: tab-separated with csv.QUOTE_NONE (the text
holds unbalanced `"`), UTF-8 with an optional BOM (MRPC's header has one), one header row except in CoLA's
train/dev files, whose four columns are fixed. Only train and dev are read; the test splits carry no labels.
A task whose files are absent comes back as `Skipped` with the reason, so one missing task never stops the
others.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

COLA_COLUMNS = ("source", "label", "original_label", "sentence")


@dataclasses.dataclass(frozen=True)
class DevSplit:
    """One evaluated dev split: `name` in results (e.g. "mnli-m"), its TSV stem and its Hub split name."""

    name: str
    tsv_stem: str
    hub_split: str


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Where a task's data lives and how to read and score it.

    Attributes:
      name: short name used on the command line and in results ("sst2").
      directory: folder under the GLUE root in the original layout ("SST-2").
      text_columns: TSV header names of the one or two text fields.
      hub_text_columns: the same fields' names in `nyu-mll/glue`.
      label_column: TSV header name of the label.
      labels: the label strings of the TSV files in Hub ClassLabel order; None for regression (STS-B).
      metrics: metric names (ufbert_jax.glue.scoring), the first being the one the cramming average uses.
      dev_splits: the dev splits evaluated after training (MNLI has matched and mismatched).
      fixed_columns: column names of a header-less file (CoLA); None when the file has a header row.
    """

    name: str
    directory: str
    text_columns: tuple[str, ...]
    hub_text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    dev_splits: tuple[DevSplit, ...]
    fixed_columns: tuple[str, ...] | None = None

    @property
    def num_labels(self) -> int:
        """Outputs of the classifier head: 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


STSB_RANGE = (0.0, 5.0)
_DEV = (DevSplit("", "dev", "validation"),)
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")


def _spec(name, directory, text, hub_text, label, labels, metrics, dev=_DEV, fixed=None) -> TaskSpec:
    dev = tuple(dataclasses.replace(d, name=d.name or name) for d in dev)
    return TaskSpec(name, directory, text, hub_text, label, labels, metrics, dev, fixed)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _spec("cola", "CoLA", ("sentence",), ("sentence",), "label", _BINARY, ("matthews",),
              fixed=COLA_COLUMNS),
        _spec("sst2", "SST-2", ("sentence",), ("sentence",), "label", _BINARY, ("accuracy",)),
        _spec("mrpc", "MRPC", ("#1 String", "#2 String"), ("sentence1", "sentence2"), "Quality", _BINARY,
              ("f1", "accuracy")),
        _spec("stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None,
              ("pearson", "spearman")),
        _spec("qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", _BINARY,
              ("f1", "accuracy")),
        _spec("mnli", "MNLI", ("sentence1", "sentence2"), ("premise", "hypothesis"), "gold_label",
              ("entailment", "neutral", "contradiction"), ("accuracy",),
              dev=(DevSplit("mnli-m", "dev_matched", "validation_matched"),
                   DevSplit("mnli-mm", "dev_mismatched", "validation_mismatched"))),
        _spec("qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label", _NLI2,
              ("accuracy",)),
        _spec("rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _NLI2,
              ("accuracy",)),
        _spec("wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _BINARY,
              ("accuracy",)),
    )
}  # fmt: skip

#: The paper's tasks (docs/glue.md): all but WNLI, which runs only on request.
DEFAULT_TASKS = tuple(name for name in TASKS if name != "wnli")


def get_task(name: str) -> TaskSpec:
    key = name.strip().lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; expected one of {tuple(TASKS)}")
    return TASKS[key]


@dataclasses.dataclass(frozen=True)
class Split:
    """Examples of one split: `texts` holds 1 or 2 lists of strings of length n; `labels` [n] int32 class
    indices or float32 scores; `source` names where they came from (file path or Hub split)."""

    texts: tuple[list[str], ...]
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Split:
        """The examples at `indices` [m], in that order."""
        texts = tuple([column[i] for i in indices] for column in self.texts)
        return Split(texts, self.labels[indices], f"{self.source} (subset of {len(indices)})")


@dataclasses.dataclass(frozen=True)
class TaskData:
    spec: TaskSpec
    train: Split
    dev: dict[str, Split]  # keyed by DevSplit.name


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A task that could not run, and why (reported in the results table, never silently dropped)."""

    task: str
    reason: str


def parse_label(spec: TaskSpec, value: str, where: str) -> int | float:
    """The label index (or STS-B score) of a raw label string; anything else is a ValueError at `where`."""
    if spec.labels is None:
        try:
            score = float(value)
        except ValueError:
            raise ValueError(f"{where}: {spec.name} label {value!r} is not a number") from None
        if not (math.isfinite(score) and STSB_RANGE[0] <= score <= STSB_RANGE[1]):
            raise ValueError(f"{where}: {spec.name} score {score} outside {list(STSB_RANGE)}")
        return score
    if value not in spec.labels:
        raise ValueError(f"{where}: {spec.name} label {value!r} not in the label set {spec.labels}")
    return spec.labels.index(value)


def _label_array(spec: TaskSpec, labels: list) -> np.ndarray:
    return np.asarray(labels, np.float32 if spec.labels is None else np.int32)


def read_tsv(spec: TaskSpec, path: Path) -> Split:
    """Reads one labelled GLUE TSV file. An empty file, a file that is not UTF-8 text, a header without
    the task's columns, a file without examples, a row with the wrong number of fields or a label outside
    the task's set is a ValueError naming the file (and line)."""
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"{path}: empty file; expected a GLUE {spec.name} TSV")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err}); expected a GLUE {spec.name} TSV") from None
    if "\0" in text:
        raise ValueError(f"{path}: has NUL bytes, not a text file; expected a GLUE {spec.name} TSV")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    columns = spec.fixed_columns or tuple(next(reader, ()))
    wanted = (*spec.text_columns, spec.label_column)
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise ValueError(f"{path}:1: columns {missing} not found; the header is {list(columns)}")
    positions = [columns.index(name) for name in wanted]
    texts: tuple[list[str], ...] = tuple([] for _ in spec.text_columns)
    labels = []
    try:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != len(columns):
                raise ValueError(
                    f"{where}: malformed row with {len(row)} tab-separated fields, expected "
                    f"{len(columns)} ({list(columns)})"
                )
            *text_values, label = (row[i] for i in positions)
            for column, value in zip(texts, text_values, strict=True):
                column.append(value)
            labels.append(parse_label(spec, label, where))
    except csv.Error as err:  # e.g. a field over csv's size limit: a row that swallowed the file
        raise ValueError(f"{path}:{reader.line_num}: {err}") from None
    if not labels:
        raise ValueError(f"{path}: no examples, only a header; expected rows of {list(columns)}")
    return Split(texts, _label_array(spec, labels), str(path))


def load_local(spec: TaskSpec, root: str | Path) -> TaskData | Skipped:
    """The task's train and dev splits from a GLUE directory in the original layout, or Skipped."""
    folder = Path(root) / spec.directory
    paths = {"train": folder / "train.tsv", **{d.name: folder / f"{d.tsv_stem}.tsv" for d in spec.dev_splits}}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        return Skipped(spec.name, f"missing {', '.join(missing)}")
    splits = {name: read_tsv(spec, path) for name, path in paths.items()}
    train = splits.pop("train")
    return TaskData(spec, train, splits)


HUB_DATASET = "nyu-mll/glue"


def _hub_split(spec: TaskSpec, rows, split: str) -> Split:
    """Converts Hub rows (dicts with the text columns and an int/float "label") to a Split."""
    texts: tuple[list[str], ...] = tuple([] for _ in spec.hub_text_columns)
    labels = []
    for i, row in enumerate(rows):
        where = f"{HUB_DATASET}/{spec.name} {split} row {i}"
        for column, name in zip(texts, spec.hub_text_columns, strict=True):
            column.append(row[name])
        label = row["label"]
        if spec.labels is not None:
            if not (isinstance(label, int | np.integer) and 0 <= label < len(spec.labels)):
                raise ValueError(f"{where}: label {label!r} not a class index in [0, {len(spec.labels)})")
            label = spec.labels[label]
        labels.append(parse_label(spec, str(label), where))
    if not labels:
        raise ValueError(f"{HUB_DATASET}/{spec.name}:{split} has no examples")
    return Split(texts, _label_array(spec, labels), f"{HUB_DATASET}/{spec.name}:{split}")


def load_hub(spec: TaskSpec, load_dataset: Callable | None = None) -> TaskData | Skipped:
    """The task from the Hugging Face Hub (`datasets.load_dataset("nyu-mll/glue", name, split=...)`), or
    Skipped with the loader's error when it cannot be fetched (offline, say). `load_dataset` is injectable
    for tests."""
    if load_dataset is None:
        # Imported here: heavy, and needed only for this source.
        from datasets import load_dataset
    splits = {"train": "train", **{d.name: d.hub_split for d in spec.dev_splits}}
    fetched = {}
    for name, hub_split in splits.items():
        try:
            fetched[name] = load_dataset(HUB_DATASET, spec.name, split=hub_split)
        except Exception as error:  # any loader failure (offline, unknown config) means it cannot run
            return Skipped(spec.name, f"{HUB_DATASET}/{spec.name}:{hub_split} unavailable: {error}")
    converted = {name: _hub_split(spec, fetched[name], splits[name]) for name in splits}
    train = converted.pop("train")
    return TaskData(spec, train, converted)
