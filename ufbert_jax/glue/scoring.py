"""The official GLUE metrics in numpy, and the two GLUE averages.

Every metric takes labels and predictions of shape [n] and returns a percentage (GLUE reports x100).
Degenerate cases score 0 instead of NaN, as scikit-learn does for Matthews and F1: a constant prediction
(an untrained regressor, say) has no correlation to report, and a NaN would poison the averages.

Averages over the rows of a results table (one row per dev split: "mnli-m" and "mnli-mm" are two rows):
- cramming: the mean of each row's first metric (CoLA Matthews, MRPC/QQP F1, STS-B Pearson, accuracy
  otherwise) over the paper's tasks, so MNLI counts twice (docs/glue.md); WNLI is left out.
- glue: the GLUE benchmark score, the mean over tasks of each task's mean metric (MRPC/QQP F1 and accuracy,
  STS-B Pearson and Spearman, MNLI matched and mismatched averaged into one task), WNLI included when run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


def _check(labels: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError(
            f"labels {labels.shape} and predictions {predictions.shape} must be equal [n], n > 0"
        )
    return labels, predictions


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    labels, predictions = _check(labels, predictions)
    return 100.0 * float(np.mean(labels == predictions))


def f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    labels, predictions = _check(labels, predictions)
    true_pos = np.sum((predictions == 1) & (labels == 1))
    false_pos = np.sum((predictions == 1) & (labels != 1))
    false_neg = np.sum((predictions != 1) & (labels == 1))
    denominator = 2 * true_pos + false_pos + false_neg
    return 100.0 * float(2 * true_pos / denominator) if denominator else 0.0


def matthews(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Matthews correlation, multiclass form (Gorodkin 2004) from the confusion matrix."""
    labels, predictions = _check(labels, predictions)
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    k = len(classes)
    confusion = np.zeros((k, k), np.float64)  # [true class, predicted class]
    np.add.at(confusion, (encoded[: len(labels)], encoded[len(labels) :]), 1.0)
    true_count, pred_count = confusion.sum(axis=1), confusion.sum(axis=0)
    n, correct = confusion.sum(), np.trace(confusion)
    covariance = correct * n - true_count @ pred_count
    denominator = np.sqrt((n * n - pred_count @ pred_count) * (n * n - true_count @ true_count))
    return 100.0 * float(covariance / denominator) if denominator else 0.0


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return 100.0 * float(np.sum(x * y) / denominator) if denominator else 0.0


def pearson(labels: np.ndarray, predictions: np.ndarray) -> float:
    labels, predictions = _check(labels, predictions)
    return _correlation(labels.astype(np.float64), predictions.astype(np.float64))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values` [n], ties sharing their mean rank (what Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])  # first of each tie group
    ends = np.r_[starts[1:], len(values)]
    group_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
    labels, predictions = _check(labels, predictions)
    return _correlation(average_ranks(labels), average_ranks(predictions))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


def compute(names: tuple[str, ...], labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """{name: percentage} for the named metrics."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names from {tuple(METRICS)}")
    return {name: METRICS[name](labels, predictions) for name in names}


#: Rows the cramming average uses: the paper's tasks, with both MNLI dev splits.
CRAMMING_ROWS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli-m", "mnli-mm", "qnli", "rte")


def averages(rows: Mapping[str, Mapping[str, float]], tasks: Mapping[str, str]) -> dict[str, dict]:
    """The averages over the rows present. `rows` maps a dev-split name to its metrics (first metric
    first); `tasks` maps it to its task ("mnli-m" -> "mnli"). Each average says which rows it covers, as
    skipped tasks make it partial; an average over nothing is None."""

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    cramming = [name for name in CRAMMING_ROWS if name in rows]
    no_cola = [name for name in cramming if name != "cola"]
    per_task: dict[str, list[float]] = {}
    for name, metrics in rows.items():
        per_task.setdefault(tasks[name], []).extend(metrics.values())
    return {
        "cramming": {"value": mean([next(iter(rows[n].values())) for n in cramming]), "rows": cramming},
        "cramming_without_cola": {
            "value": mean([next(iter(rows[n].values())) for n in no_cola]),
            "rows": no_cola,
        },
        "glue": {"value": mean([float(np.mean(v)) for v in per_task.values()]), "rows": list(rows)},
    }
