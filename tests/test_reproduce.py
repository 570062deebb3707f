"""The reproduction (reproduce/): the data's travelling form, the GPU session's pieces, the report's
readings, the configs, and the whole pipeline at a tiny scale on CPU (prepare, start, wait, report)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import glue_h200, h200_crammedbert_3072, h200_ultrafastbert_1x11
from reproduce import results_report, session, travel
from ufbert_jax import io
from ufbert_jax.glue.finetune import Recipe

ROOT = Path(__file__).resolve().parents[1]


# ---- travel ------------------------------------------------------------------------------------------


def test_pack_and_unpack_round_trip(tmp_path, rng):
    plain = tmp_path / "plain"
    (plain / "shards").mkdir(parents=True)
    np.save(plain / "shards" / "shard_00000.npy", rng.integers(0, 300, (64, 16), dtype=np.uint16))
    (plain / "shards" / "manifest.json").write_text(json.dumps({"rows": 64}))
    (plain / "glue" / "RTE").mkdir(parents=True)
    (plain / "glue" / "RTE" / "dev.tsv").write_text("index\tsentence1\n" * 50)
    files = {p.relative_to(plain): p.read_bytes() for p in plain.rglob("*") if p.is_file()}

    index = travel.pack(plain, tmp_path / "travel", workers=1)
    assert set(index["files"]) == {p.as_posix() for p in files}
    assert index["xz_bytes"] < index["bytes"] == sum(map(len, files.values()))
    shutil.rmtree(plain)
    travel.unpack(tmp_path / "travel", plain, workers=1)
    assert {p.relative_to(plain): p.read_bytes() for p in plain.rglob("*") if p.is_file()} == files

    stamp = (plain / "shards" / "shard_00000.npy").stat().st_mtime_ns
    travel.unpack(tmp_path / "travel", plain, workers=1)  # already there: checked, not rewritten
    assert (plain / "shards" / "shard_00000.npy").stat().st_mtime_ns == stamp

    entry = index["files"]["glue/RTE/dev.tsv"]
    (plain / "glue" / "RTE" / "dev.tsv").unlink()
    index["files"]["glue/RTE/dev.tsv"] = {**entry, "sha256": "0" * 64}
    (tmp_path / "travel" / travel.INDEX).write_text(json.dumps(index))
    with pytest.raises(io.FileFormatError, match=r"dev\.tsv\.xz: unpacks to"):
        travel.unpack(tmp_path / "travel", plain, workers=1)


def test_pack_refuses_to_empty_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text("a")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"holds no TRAVEL\.json"):
        travel.pack(tmp_path / "plain", tmp_path / "mine", workers=1)
    assert (tmp_path / "mine" / "keep.txt").is_file()


# ---- the session's pieces ----------------------------------------------------------------------------


def test_glue_jobs_start_every_task_once_before_any_second_seed():
    jobs = session.glue_jobs(glue_h200.SEEDS)
    assert jobs[:5] == [("sst2", 0), ("cola", 0), ("stsb", 0), ("mrpc", 0), ("rte", 0)]
    assert len(jobs) == sum(glue_h200.SEEDS.values()) == 13
    assert sorted(jobs) == sorted({(t, s) for t, n in glue_h200.SEEDS.items() for s in range(n)})


def test_glue_seeds_flag():
    assert session.glue_seeds(None) == glue_h200.SEEDS
    assert session.glue_seeds("") == {}
    assert session.glue_seeds("rte=2,sst2=1") == {"rte": 2, "sst2": 1}
    with pytest.raises(ValueError, match="TASK=N"):
        session.glue_seeds("rte=0")


def test_clean_log_keeps_the_last_state_of_each_progress_bar():
    text = "start\n  0%|   | 0/2\r 50%|#  | 1/2\r100%|## | 2/2\nend\n"
    assert session.clean_log(text) == "start\n100%|## | 2/2\nend\n"


# ml_collections' config_flags loads the config file with the deprecated load_module (as train.py does).
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_resolved_config_applies_the_flags_and_ignores_this_process_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--config.not_a_field=1"])
    config = session.resolved_config("configs/h200_ultrafastbert_1x11.py", ["--config.steps=7"])
    assert config["steps"] == 7 and config["model"] == "ultrafastbert-1x11"


def test_wait_names_a_missing_session(tmp_path):
    with pytest.raises(FileNotFoundError, match="no session 'x'"):
        session.main(["wait", "x", "--root", str(tmp_path)])


# ---- configs -----------------------------------------------------------------------------------------


def test_h200_configs_differ_only_in_the_model():
    dense, fff = h200_crammedbert_3072.get_config(), h200_ultrafastbert_1x11.get_config()
    assert (dense.model, fff.model) == ("crammedbert-3072", "ultrafastbert-1x11")
    for config in (dense, fff):
        config.model, config.model_overrides = "", {}
    assert dense.to_dict() == fff.to_dict()


def test_h200_budget_and_evaluations():
    config = h200_crammedbert_3072.get_config()
    assert 12 < 60 * config.budget_hours <= 13.5  # >= 12 minutes of training, inside a 30-minute session
    # >= 15 held-out points at the slower model's measured loop (463k tokens/s, H100): a curve, not two dots.
    steps = 463_000 * 3600 * config.budget_hours / (config.microbatch * config.seq_len)
    assert 15 <= steps / config.eval_every <= 40 and config.eval_every % config.log_every == 0


def test_glue_h200_recipes_and_seeds():
    config = glue_h200.get_config()
    recipes = {task: Recipe.for_task(config, task) for task in glue_h200.TASKS}
    assert recipes["sst2"].epochs == 1 and recipes["cola"].epochs == 5 and recipes["rte"].epochs == 5
    assert all(r.batch_size == 16 and r.lr == 4e-5 and r.buckets == () for r in recipes.values())
    assert set(glue_h200.SEEDS) == set(glue_h200.TASKS)
    assert all(glue_h200.SEEDS[t] >= 3 for t in ("cola", "mrpc", "stsb", "rte"))


# ---- the report's readings on made-up records --------------------------------------------------------


def _record(name, model, steps_per_s, *, budget_s=None, steps=None, glue=None, benchmark=None):
    """A session record whose held-out loss falls linearly in tokens: 10 - tokens / 1e6 (+0.5 for FFF)."""
    config = h200_crammedbert_3072.get_config().to_dict()
    config.update(model=model, microbatch=4, seq_len=8, log_every=10, eval_every=300, eval_batches=2)
    config.update(budget_hours=(budget_s or 0) / 3600, steps=steps or 0)
    last = steps or int(budget_s * steps_per_s)
    offset = 0.0 if model.startswith("crammedbert") else 0.5
    records = []
    for step in range(10, last + 1, 10):
        records.append(
            {
                "step": step,
                "train/loss": 11.0,
                "batch": 4,
                "tokens_per_s": 32 * steps_per_s,
                "elapsed_s": step / steps_per_s,
            }
        )
        if step % 300 == 0 or step == last:
            records.append({"step": step, "eval/loss": 10 - step * 32 / 1e6 + offset, "eval/accuracy": 0.1})
    jobs = [
        {"task": task, "seed": seed, "status": "ok", "dev": {task: {"metrics": {"m": score}}}}
        for task, scores in (glue or {}).items()
        for seed, score in enumerate(scores)
    ]
    return {
        "name": name,
        "model": model,
        "config": config,
        "train_flags": [],
        "commit": None,
        "machine": {"gpu": "NVIDIA H100 80GB HBM3, 580, 81559 MiB, Default", "cpus": 16, "versions": {}},
        "data": {"train_rows": 10_000, "seq_len": 8},
        "stage": "done",
        "stages": {"train": {"seconds": 1.0}},
        "train": {"exit_code": 0, "records": records},
        "glue": {"seeds": {t: len(s) for t, s in (glue or {}).items()}, "parallel": 8, "jobs": jobs},
        "benchmark": benchmark,
    }


@pytest.fixture
def records(tmp_path):
    benchmark = {
        "device": "NVIDIA H100 80GB HBM3",
        "seconds": 60,
        "rows": [
            {"model": "crammedbert-3072", "real": {"tokens_per_s": 100.0}},
            {"model": "ultrafastbert-1x11", "real": {"tokens_per_s": 150.0}},
        ],
    }
    glue = dict(cola=[10, 30, 20], sst2=[80], mrpc=[70, 72, 71], stsb=[50, 60, 40], rte=[55, 53, 54])
    made = {
        "dense": _record("crammedbert-3072", "crammedbert-3072", 10, budget_s=100, glue=glue),
        "fff": _record("ultrafastbert-1x11", "ultrafastbert-1x11", 15, budget_s=100, glue={"rte": [60, 58]}),
        "steps": _record(
            "ultrafastbert-1x11-steps", "ultrafastbert-1x11", 15, steps=1000, benchmark=benchmark
        ),
    }
    paths = {}
    for key, record in made.items():
        paths[key] = tmp_path / f"repro_{record['name']}.json"
        paths[key].write_text(json.dumps(record))
    return paths


def test_readings_at_equal_wall_clock_and_equal_tokens(records):
    runs = [results_report.load_run(records[k]) for k in ("dense", "fff", "steps")]
    dense, fff, steps = (run["summary"] for run in runs)
    assert (dense["steps"], fff["steps"], steps["steps"]) == (1000, 1500, 1000)
    assert dense["tokens"] == 1000 * 32 and dense["epochs"] == pytest.approx(32_000 / 80_000)

    readings = results_report.readings_of(runs)
    wall = readings["equal_wall_clock"]
    assert wall["seconds"] == [25.0, 50.0, 75.0, 100.0] and set(wall["loss"]) == {dense["name"], fff["name"]}
    # At 50 s: dense 500 steps = 16,000 tokens; FFF 750 steps = 24,000 tokens (+0.5).
    assert wall["loss"]["crammedbert-3072"][1] == pytest.approx(10 - 0.016)
    assert wall["loss"]["ultrafastbert-1x11"][1] == pytest.approx(10.5 - 0.024)
    assert wall["loss"]["ultrafastbert-1x11"][3] == fff["final_eval_loss"]
    tokens = readings["equal_tokens"]
    assert tokens["slowest"] == "crammedbert-3072" and tokens["tokens"][-1] == 32_000
    assert tokens["loss"]["ultrafastbert-1x11"][-1] == pytest.approx(10.5 - 0.032)  # mid-schedule
    # 25 s = 250 dense steps = 8,000 tokens: before the first evaluation (step 300), so no reading.
    assert wall["loss"]["crammedbert-3072"][0] is None and tokens["loss"]["crammedbert-3072"][0] is None

    (row,) = readings["end_of_schedule"]
    assert row["name"] == "ultrafastbert-1x11-steps" and row["tokens"] == 32_000
    assert row["others"][0] == {
        "name": "crammedbert-3072",
        "loss": dense["final_eval_loss"],
        "end_of_schedule": True,
    }
    speed = readings["speed_ratio"]["runs"]["ultrafastbert-1x11"]
    assert speed["side_by_side"] == 1.5 and speed["sessions"] == pytest.approx(1.5)
    assert speed["loss"] == pytest.approx(10.5 - 0.048)


def test_glue_medians_averages_ratios_and_what_is_missing(records, tmp_path):
    runs = [results_report.load_run(records[k]) for k in ("dense", "fff")]
    scores = runs[0]["glue_scores"]
    assert scores["tasks"]["cola"]["median"] == 20 and scores["tasks"]["stsb"]["seeds"] == [40, 50, 60]
    assert scores["avg5"] == pytest.approx((20 + 80 + 71 + 50 + 54) / 5)
    assert scores["avg4"] == pytest.approx((80 + 71 + 50 + 54) / 4)
    fff = runs[1]["glue_scores"]
    assert fff["tasks"]["rte"]["median"] == 59 and fff["avg5"] is None  # CoLA, SST-2, ... not run
    ratios = results_report.glue_ratios(runs)
    assert list(ratios) == ["ultrafastbert-1x11"] and ratios["ultrafastbert-1x11"]["rte"] == pytest.approx(
        59 / 54
    )

    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"head\n{results_report.BEGIN}\nold\n{results_report.END}\ntail\n")
    plot, summary = tmp_path / "loss.png", tmp_path / "summary.json"
    broken = json.loads(records["fff"].read_text())  # a session whose training died before any record
    broken.update(name="broken", stage="failed", glue={"seeds": {"rte": 3}, "parallel": 8, "jobs": []})
    broken["train"] = {"exit_code": 1, "records": []}
    records["broken"] = records["fff"].with_name("repro_broken.json")
    records["broken"].write_text(json.dumps(broken))
    results_report.write_report([records[k] for k in ("dense", "fff", "broken")], doc, plot, summary)
    text = doc.read_text()
    assert "| broken | NVIDIA H100 80GB HBM3 | 1.67 min | failed: no step logged |" in text
    assert text.startswith("head\n") and text.endswith("tail\n") and "old" not in text
    assert "**54.0** (53.0, 54.0, 55.0)" in text and "| not run |" in text
    assert "(not run: the faster model's run with `--config.budget_hours=0" in text
    assert plot.stat().st_size > 10_000 and json.loads(summary.read_text())["equal_tokens"]["slowest"]


# ---- the whole pipeline, tiny ------------------------------------------------------------------------


def _tiny_glue(folder: Path) -> None:
    words = (ROOT / "data/sample/wells_thirty_strange_stories.txt").read_text().split()[:4000]
    rng = np.random.default_rng(0)
    (folder / "RTE").mkdir(parents=True)
    for split, rows in (("train", 32), ("dev", 16)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(rows):
            a, b = (" ".join(words[j : j + 8]) for j in rng.integers(0, len(words) - 8, 2))
            lines.append(f"{i}\t{a}\t{b}\t{('entailment', 'not_entailment')[i % 2]}")
        (folder / "RTE" / f"{split}.tsv").write_text("\n".join(lines) + "\n")


# ~50 s on 2 cores, the largest single share of `make test` (which must stay under 10 minutes): run by
# `make test-slow`; the other tests of this file check each stage's pieces in the default run.
@pytest.mark.slow
def test_the_pipeline_at_a_tiny_scale(tmp_path):
    """prepare_h200_data (tiny corpus, compressed), session start (unpack, a 15-second tiny-dense run in
    the background, two GLUE seeds side by side), wait, and the report: the GPU sessions' commands, tiny."""
    (tmp_path / "corpus").mkdir()
    text = (ROOT / "data/sample/austen_emma.txt").read_text()[:150_000]
    (tmp_path / "corpus" / "emma.txt").write_text(text)
    _tiny_glue(tmp_path / "glue_src")
    plain, shards = tmp_path / "plain", tmp_path / "plain" / "shards"
    data = [
        f"--config.data.sources={tmp_path / 'corpus'}",
        f"--config.data.shard_dir={shards}",
        f"--config.data.tokenizer={shards / 'tokenizer.json'}",
        "--config.seq_len=32",
        "--config.model_overrides.vocab_size=512",
    ]
    python = [sys.executable, "-m"]
    prepare = [*python, "reproduce.prepare_h200_data", "--config=configs/h200_crammedbert_3072.py", *data]
    prepare += ["--shard_rows=256", f"--glue_dir={tmp_path / 'glue_src'}", "--glue_tasks=RTE"]
    prepare += [f"--plain={plain}", f"--travel={tmp_path / 'travel'}", "--workers=1"]
    subprocess.run(prepare, cwd=ROOT, check=True, timeout=120)
    shutil.rmtree(plain)  # what the GPU machine gets: the compressed copy alone

    tiny = ["--config.model=tiny-dense", "--config.model_overrides.dtype=float32", "--config.microbatch=16"]
    tiny += ["--config.final_batch=32", f"--config.budget_hours={15 / 3600}", "--config.eval_every=40"]
    tiny += ["--config.eval_batches=2", "--config.log_every=10", "--config.data.worker_count=0"]
    glue = "--config.max_train_examples=16 --config.epochs=1 --config.max_len=32 --config.eval_batch_size=16"
    start = [*python, "reproduce.session", "start", "crammedbert-3072", "--root", str(tmp_path / "sessions")]
    start += ["--travel", str(tmp_path / "travel"), "--data", str(plain), "--unpack_workers", "1"]
    start += ["--glue_seeds", "rte=2", "--glue_parallel", "2", f"--glue_flags={glue}", "--commit", "abc"]
    start += ["--wait", "5", "--every", "5", "--out", str(tmp_path / "out"), "--", *data, *tiny]
    started = subprocess.run(start, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "started crammedbert-3072" in started.stdout
    wait = [*python, "reproduce.session", "wait", "crammedbert-3072", "--root", str(tmp_path / "sessions")]
    wait += ["--wait", "240", "--every", "10", "--out", str(tmp_path / "out")]
    waited = subprocess.run(wait, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "crammedbert-3072: done" in waited.stdout

    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "repro_crammedbert-3072.json",
        "crammedbert-3072-train.log",
        "crammedbert-3072-glue.log",
        "crammedbert-3072-session.log",
        "crammedbert-3072-loss.png",
    }
    record = json.loads((out / "repro_crammedbert-3072.json").read_text())
    assert (
        record["stage"] == "done" and record["commit"] == "abc" and record["config"]["model"] == "tiny-dense"
    )
    assert (
        record["data"]["held_out_rows"] == 32
        and record["data"]["travel_bytes"] < record["data"]["plain_bytes"]
    )
    assert [(j["task"], j["seed"], j["status"]) for j in record["glue"]["jobs"]] == [
        ("rte", 0, "ok"),
        ("rte", 1, "ok"),
    ]
    assert any("eval/loss" in r for r in record["train"]["records"])

    # The second session's record, made up from the first: the report needs two models.
    fff = {**record, "name": "ultrafastbert-1x11", "model": "ultrafastbert-1x11"}
    fff["config"] = {**record["config"], "model": "tiny-fff"}
    (out / "repro_ultrafastbert-1x11.json").write_text(json.dumps(fff))
    doc = tmp_path / "RESULTS.md"
    shutil.copyfile(ROOT / "docs/RESULTS.md", doc)
    report = [*python, "reproduce.results_report", str(out / "repro_crammedbert-3072.json")]
    report += [str(out / "repro_ultrafastbert-1x11.json"), f"--doc={doc}", f"--plot={tmp_path / 'loss.png'}"]
    report += [f"--summary={tmp_path / 'summary.json'}"]
    subprocess.run(report, cwd=ROOT, check=True, timeout=120)
    assert "| ultrafastbert-1x11 / crammedbert-3072 (ours) |" in doc.read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["glue"]["crammedbert-3072"]["tasks"]["rte"]["planned"] == 2
