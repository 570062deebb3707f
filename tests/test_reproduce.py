"""The H200 reproduction's helpers: shard subsampling, GLUE merging, the pretraining summary, the configs."""

import json

import numpy as np
import pytest

from configs import glue_h200, h200_crammedbert_3072, h200_ultrafastbert_1x11
from reproduce import prepare_h200_data, results_report
from ufbert_jax.data.shards import FORMAT, TokenShards
from ufbert_jax.glue.finetune import Recipe


@pytest.mark.parametrize("total, keep", [(33, 13), (10, 2), (7, 7), (5, 9), (100, 37)])
def test_spread_keeps_first_last_and_evenly(total, keep):
    kept = prepare_h200_data.spread(total, keep)
    assert kept[0] == 0 and kept[-1] == total - 1
    assert len(kept) == min(keep, total) and kept == sorted(set(kept))
    gaps = np.diff(kept)
    assert gaps.max() - gaps.min() <= 1  # evenly spread: gaps differ by at most one shard


def _shard_folder(tmp_path, rng, rows_per_shard):
    """A shard folder in the manifest format with random uint16 rows; returns (folder, the arrays)."""
    arrays = [rng.integers(0, 2**16, (rows, 8), dtype=np.uint16) for rows in rows_per_shard]
    shards = []
    for index, array in enumerate(arrays):
        np.save(tmp_path / f"shard_{index:05d}.npy", array)
        shards.append({"file": f"shard_{index:05d}.npy", "rows": len(array)})
    manifest = {"format": FORMAT, "seq_len": 8, "vocab_size": 2**16, "dtype": "uint16", "sources": ["x"]}
    manifest.update(rows=sum(rows_per_shard), shards=shards, tokenizer_sha256="0", separator_id=5)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path, arrays


def test_subsample_shards_keeps_whole_shards_readable(tmp_path, rng):
    folder, arrays = _shard_folder(tmp_path, rng, [4, 4, 4, 4, 4, 3])
    manifest = prepare_h200_data.subsample_shards(folder, 3)
    assert manifest["subsample"]["kept"] == [0, 2, 5]
    kept = manifest["subsample"]["kept"]
    assert sorted(p.name for p in folder.glob("shard_*.npy")) == [f"shard_{i:05d}.npy" for i in kept]
    shards = TokenShards(folder)
    expected = np.concatenate([arrays[i] for i in kept]).astype(np.int32)
    assert len(shards) == manifest["rows"] == len(expected) == 11
    np.testing.assert_array_equal(np.stack([shards[i] for i in range(len(shards))]), expected)
    assert prepare_h200_data.subsample_shards(folder, 2) == manifest  # a second call changes nothing


def _task_results(task, row, metrics):
    return {
        "workdir": "w",
        "model": {},
        "source": "s",
        "tasks": {task: {"status": "ok", "dev": {row: {"examples": 1, "metrics": metrics}}}},
    }


def test_merge_glue_marks_missing_tasks_and_averages(tmp_path):
    paths = []
    for task, metrics in (("rte", {"accuracy": 60.0}), ("mrpc", {"f1": 80.0, "accuracy": 70.0})):
        paths.append(tmp_path / f"{task}.json")
        paths[-1].write_text(json.dumps(_task_results(task, task, metrics)))
    merged = results_report.merge_glue(paths, ["rte", "mrpc", "sst2"])
    assert merged["tasks"]["sst2"]["status"] == "skipped"
    assert merged["averages"]["cramming_without_cola"]["value"] == pytest.approx(70.0)  # F1 for MRPC
    scores = results_report.glue_scores(merged)
    assert scores["rte"] == 60.0 and scores["mrpc"] == 80.0 and scores["sst2"] is None
    assert scores["avg4"] is None and scores["avg5"] is None  # partial averages are not shown


def test_averages_over_our_tasks():
    scores = dict(cola=10.0, sst2=90.0, mrpc=80.0, stsb=70.0, rte=60.0)
    assert results_report.averages(scores) == {"avg5": pytest.approx(62.0), "avg4": pytest.approx(75.0)}


def test_pretraining_summary_counts_tokens_and_updates():
    config = h200_crammedbert_3072.get_config().to_dict()
    config.update(microbatch=4, seq_len=8, eval_every=10, eval_batches=2)
    # Steps 1-10 at batch 4 (1 microbatch per update), 11-20 at batch 8 (2 per update): 10 + 5 updates.
    records = [
        {"step": 10, "train/loss": 5.0, "batch": 4, "tokens_per_s": 100.0, "elapsed_s": 1.0},
        {"step": 10, "eval/loss": 5.5, "eval/accuracy": 0.1},
        {"step": 20, "train/loss": 4.0, "batch": 8, "tokens_per_s": 200.0, "elapsed_s": 2.0},
        {"step": 20, "eval/loss": 4.5, "eval/accuracy": 0.2},
    ]
    run = {"config": config, "records": records, "shard_rows": 48}
    summary = results_report.pretraining_summary(run)
    assert summary["tokens"] == 20 * 4 * 8 and summary["updates"] == 15
    assert summary["epochs"] == pytest.approx(20 * 4 / (48 - 2 * 4))  # held-out rows are not trained on
    assert (summary["eval_loss"], summary["train_loss"], summary["dense"]) == (4.5, 4.0, True)


def test_h200_configs_differ_only_in_the_model():
    dense, fff = h200_crammedbert_3072.get_config(), h200_ultrafastbert_1x11.get_config()
    assert (dense.model, fff.model) == ("crammedbert-3072", "ultrafastbert-1x11")
    for config in (dense, fff):
        config.model, config.model_overrides = "", {}
    assert dense.to_dict() == fff.to_dict()


def test_glue_h200_recipes():
    config = glue_h200.get_config()
    recipes = {task: Recipe.for_task(config, task) for task in glue_h200.TASKS}
    assert recipes["sst2"].epochs == 1 and recipes["cola"].epochs == 5 and recipes["rte"].epochs == 5
    assert all(r.batch_size == 16 and r.lr == 4e-5 and r.buckets == () for r in recipes.values())
