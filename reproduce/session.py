"""One model's GPU session of the reproduction (docs/RESULTS.md): pretraining, GLUE and the record that
comes back, run in the background on the device machine and watched by a few long device calls.

Reproduces one model's row of docs/RESULTS.md. From the repository root on the GPU machine:

    source reproduce/gpu_env.sh && python3 -m reproduce.session start crammedbert-3072 --commit SHA \
        --wait 480 --out $OUT                                  # call 1, carry [".device", ".whl"]
    python3 -m reproduce.session wait crammedbert-3072 --wait 560 --out $OUT    # calls 2, 3: no carry

start     unpacks the data (.device -> runs/h200-data, reproduce/travel.py, one process per core),
          resolves the train config, records the machine, and launches the pipeline in a process session
          of its own (setsid), which outlives the device command; then waits as `wait` does.
pipeline  the background process: 1. train.py with configs/h200_<model>.py (13 minutes of wall clock);
          2. with --benchmark_seconds S, benchmarks/train_pipeline.py (both models' real loop side by side,
          S seconds each: the speed ratio of one machine); 3. eval_glue.py with configs/glue_h200.py, one
          process per task and fine-tuning seed (glue_h200.SEEDS), --glue_parallel of them side by side on
          the GPU (batch-16 steps are bound by the host, so one process leaves the GPU mostly idle), each
          cut at the deadline; 4. the record.
wait      prints a progress line every --every seconds until the pipeline ends or --wait seconds pass,
          then refreshes the record and copies it and the logs into --out, so that every call brings back
          what exists so far: repro_NAME.json, NAME-train.log, NAME-glue.log, NAME-session.log,
          NAME-loss.png.
stop      ends the pipeline and every process it started (its process group).

The record repro_NAME.json is self-contained (the resolved train config, the machine, the data, the stage
times, every metrics.jsonl record, each GLUE job's dev scores, the benchmark's rows): commit it as
docs/results/repro_NAME.json; reproduce/results_report.py combines the sessions' records.
Files on the machine: runs/session-NAME/{plan.json, state.json, session.log, train.log, workdir/, glue/,
out/}. Machine-specific: our device machine's limits (10 minutes a command, 30 minutes of device time and of
holding a machine per session, a machine kept only while calls follow within ~30 s, 8 files back from $OUT)
set the defaults: the deadline (24 minutes after `start`) leaves the last call time to bring the record back;
elsewhere raise --deadline_min.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from reproduce import travel

ROOT = Path(__file__).resolve().parents[1]
RECORD_FORMAT = "ufbert-jax-repro-session/1"
FINAL_STAGES = ("done", "failed")
# Tasks in the order their jobs start: the longest first (steps at batch 16, configs/glue_h200.py), so the
# last job to finish is a short one; every task's first seed starts before any second seed.
LONGEST_FIRST = ("sst2", "cola", "stsb", "mrpc", "rte")
GLUE_MEMORY = 0.85  # the share of the GPU's memory that the side-by-side GLUE processes split between them
JOB_POLL_S = 1.0
TERMINATE_GRACE_S = 30  # train.py saves its step on SIGTERM before it exits
VERSIONED = ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "grain", "tokenizers")


def _now() -> float:
    return time.time()


def _write_json(path: Path, value: dict) -> None:
    """Atomically (a reader in another process never sees half a file)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def _read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


def _log(session: Session, message: str) -> None:
    since = _now() - session.plan()["created"]
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())} +{since:.0f}s] {message}", flush=True)


class Session:
    """The folder of one session, runs/session-NAME, and the reads and writes of its files."""

    def __init__(self, root: str | Path, name: str):
        self.name = name
        self.dir = Path(root).resolve() / f"session-{name}"
        self.workdir = self.dir / "workdir"
        self.glue = self.dir / "glue"
        self.out = self.dir / "out"

    def plan(self) -> dict:
        if not (self.dir / "plan.json").is_file():
            raise FileNotFoundError(
                f"no session {self.name!r} in {self.dir.parent}: start it first (on a fresh machine, "
                "whatever the last one ran is gone)"
            )
        return json.loads((self.dir / "plan.json").read_text())

    def state(self) -> dict:
        return _read_json(self.dir / "state.json", {"stage": "starting", "stages": {}, "jobs": {}})

    def write_state(self, state: dict) -> None:
        _write_json(self.dir / "state.json", state)

    def alive(self) -> bool:
        """Whether the pipeline process still runs (a zombie child of this process counts as ended)."""
        pid = _read_json(self.dir / "pid.json", {}).get("pid")
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)  # our own child (start waits on it): reap a zombie
            return finished == 0
        except ChildProcessError:
            return True


# ---- start -------------------------------------------------------------------------------------------


def resolved_config(config_file: str, train_flags: list[str]) -> dict:
    """The train config that `train.py --config=config_file train_flags...` runs (only --config.* flags)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["train.py", f"--config={config_file}", *train_flags]
    values = flags.FlagValues()
    # sys_argv: without it the flag reads its overrides from this process's own command line.
    config_flags.DEFINE_config_file(
        "config", None, "train config", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return json.loads(values.config.to_json())


def machine() -> dict:
    """The GPU (nvidia-smi), cores, Python and package versions: what the record says it ran on."""
    try:
        query = "--query-gpu=name,driver_version,memory.total,compute_mode"
        done = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        gpu = done.stdout.strip() or f"nvidia-smi failed: {done.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as err:
        gpu = f"no GPU ({type(err).__name__}: {err})"
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "gpu": gpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
    }


def data_summary(config: dict, index: dict) -> dict:
    """The unpacked shards' rows (held out, trained on) and the data's size before and after compression."""
    manifest = json.loads((ROOT / config["data"]["shard_dir"] / "manifest.json").read_text())
    held_out = config["eval_batches"] * config["microbatch"] if config["eval_every"] else 0
    return {
        "shards": len(manifest["shards"]),
        "rows": manifest["rows"],
        "seq_len": manifest["seq_len"],
        "vocab_size": manifest["vocab_size"],
        "held_out_rows": held_out,
        "train_rows": manifest["rows"] - held_out,
        "travel_bytes": index["xz_bytes"],
        "plain_bytes": index["bytes"],
    }


def glue_seeds(text: str | None) -> dict[str, int]:
    """`cola=3,sst2=1` -> {"cola": 3, "sst2": 1}; None -> configs/glue_h200.SEEDS; "" -> no GLUE."""
    if text is None:
        from configs import glue_h200

        return dict(glue_h200.SEEDS)
    seeds = {}
    for part in filter(None, text.split(",")):
        task, _, count = part.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--glue_seeds part {part!r}: expected TASK=N with N >= 1")
        seeds[task.strip()] = int(count)
    return seeds


def start(args: argparse.Namespace, train_flags: list[str]) -> int:
    session = Session(args.root, args.name or args.model)
    if session.dir.exists():
        if session.alive():
            raise SystemExit(f"{session.dir}: its pipeline still runs; `wait` for it or `stop` it first")
        if not args.restart:
            raise SystemExit(f"{session.dir} exists (an earlier run): pass --restart to replace it")
        shutil.rmtree(session.dir)
    created = _now()
    index = travel.unpack(args.travel, args.data, args.unpack_workers)
    unpacked = _now()
    config_file = args.config or f"configs/h200_{args.model.replace('-', '_')}.py"
    config = resolved_config(config_file, train_flags)  # a bad flag fails here, before anything is written
    plan = {
        "name": session.name,
        "model": args.model,
        "config_file": config_file,
        "train_flags": train_flags,
        "commit": args.commit,
        "created": created,
        "deadline": created + 60 * args.deadline_min,
        "unpack_s": round(unpacked - created, 1),
        "benchmark_seconds": args.benchmark_seconds,
        "glue": {
            "seeds": glue_seeds(args.glue_seeds),
            "parallel": args.glue_parallel,
            "flags": args.glue_flags.split(),
            "dir": str(Path(args.data).resolve() / "glue"),
        },
        "machine": machine(),
        "config": config,
        "data": data_summary(config, index),
    }
    session.dir.mkdir(parents=True)
    _write_json(session.dir / "plan.json", plan)
    with (session.dir / "session.log").open("a") as log:
        command = [sys.executable, "-m", "reproduce.session", "pipeline", session.name]
        process = subprocess.Popen(
            [*command, "--root", str(session.dir.parent)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: the pipeline outlives the device command that starts it
        )
    _write_json(session.dir / "pid.json", {"pid": process.pid})
    print(
        f"started {session.name}: pipeline pid {process.pid}, {plan['machine']['gpu']}; data unpacked in "
        f"{plan['unpack_s']} s; deadline in {args.deadline_min} min"
    )
    return wait(session, args.wait, args.every, args.out)


# ---- the pipeline (background) -----------------------------------------------------------------------


_stopping = False  # set by the pipeline's SIGTERM handler: `stop` has signalled the whole process group


def _terminate(process: subprocess.Popen) -> None:
    """SIGTERM (unless `stop` already sent it: a second one makes train.py quit without saving), a grace
    period, then SIGKILL."""
    if process.poll() is None:
        if not _stopping:
            process.terminate()
        try:
            process.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _run_child(command: list[str], log_path: Path, deadline: float, env: dict | None = None) -> int | None:
    """Runs `command` from the repository root, output to `log_path`; its exit status, None if cut at the
    deadline."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            return process.wait(timeout=max(deadline - _now(), 1.0))
        except subprocess.TimeoutExpired:
            return None
        finally:
            _terminate(process)  # cut at the deadline, or the pipeline itself is being stopped


def train_command(session: Session, plan: dict) -> list[str]:
    return [
        sys.executable,
        "train.py",
        f"--config={plan['config_file']}",
        f"--workdir={session.workdir}",
        *plan["train_flags"],
    ]


def glue_jobs(seeds: dict[str, int]) -> list[tuple[str, int]]:
    """(task, seed) in start order: each task's seed 0, longest task first, then seed 1, and so on."""
    last = len(LONGEST_FIRST)
    order = sorted(seeds, key=lambda task: LONGEST_FIRST.index(task) if task in LONGEST_FIRST else last)
    rounds = range(max(seeds.values(), default=0))
    return [(task, seed) for seed in rounds for task in order if seed < seeds[task]]


def glue_command(session: Session, plan: dict, task: str, seed: int) -> list[str]:
    return [
        sys.executable,
        "eval_glue.py",
        "--config=configs/glue_h200.py",
        f"--workdir={session.workdir}",
        f"--glue_dir={plan['glue']['dir']}",
        f"--config.tasks={task}",
        f"--config.seed={seed}",
        f"--out={session.glue / f'{task}-s{seed}'}",
        *plan["glue"]["flags"],
    ]


def _job_status(session: Session, key: str, task: str, exit_code: int | None) -> str:
    if exit_code is None:
        return "cut"
    results = _read_json(session.glue / key / "results.json", {})
    ok = results.get("tasks", {}).get(task, {}).get("status") == "ok"
    return "ok" if exit_code == 0 and ok else "failed"


def run_glue(session: Session, plan: dict, state: dict) -> None:
    """The GLUE jobs, `parallel` at a time, each cut at the deadline; their statuses go to state.json."""
    parallel = plan["glue"]["parallel"]
    env = {
        **os.environ,
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{GLUE_MEMORY / parallel:.3f}",
        "TOKENIZERS_PARALLELISM": "false",
    }
    session.glue.mkdir(exist_ok=True)
    waiting = collections.deque(glue_jobs(plan["glue"]["seeds"]))
    for task, seed in waiting:
        state["jobs"][f"{task}-s{seed}"] = {"task": task, "seed": seed, "status": "waiting"}
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    try:
        while waiting or running:
            if _now() >= plan["deadline"]:
                for key, (process, _) in running.items():
                    _terminate(process)
                    state["jobs"][key].update(status="cut", end=_now())
                for task, seed in waiting:
                    state["jobs"][f"{task}-s{seed}"]["status"] = "not run (deadline)"
                _log(session, f"GLUE cut at the deadline: {len(running)} running, {len(waiting)} waiting")
                running.clear()
                break
            while waiting and len(running) < parallel:
                task, seed = waiting.popleft()
                key = f"{task}-s{seed}"
                log = (session.glue / f"{key}.log").open("w")
                process = subprocess.Popen(
                    glue_command(session, plan, task, seed),
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
                running[key] = (process, log)
                state["jobs"][key].update(status="running", start=_now())
            for key, (process, log) in list(running.items()):
                if process.poll() is not None:
                    log.close()
                    job = state["jobs"][key]
                    status = _job_status(session, key, job["task"], process.returncode)
                    job.update(status=status, exit_code=process.returncode, end=_now())
                    _log(session, f"GLUE {key}: {status} in {job['end'] - job['start']:.0f} s")
                    del running[key]
            session.write_state(state)
            time.sleep(JOB_POLL_S)
    finally:
        for process, log in running.values():
            _terminate(process)
            log.close()


def _stage(session: Session, state: dict, name: str) -> dict:
    state["stage"] = name
    state["stages"][name] = {"start": _now()}
    session.write_state(state)
    _log(session, f"stage {name}")
    return state["stages"][name]


def pipeline(session: Session) -> int:
    """Train, benchmark, GLUE, record: the background process that `start` launches."""
    plan, state = session.plan(), {"stage": "starting", "stages": {}, "jobs": {}, "error": None}

    def stopped(signum, frame):
        global _stopping
        _stopping = True
        sys.exit(128 + signum)  # the finally clauses below and in _run_child / run_glue still run

    signal.signal(signal.SIGTERM, stopped)
    try:
        stage = _stage(session, state, "train")
        exit_code = _run_child(train_command(session, plan), session.dir / "train.log", plan["deadline"])
        stage.update(end=_now(), exit_code=exit_code)
        if exit_code != 0:
            raise RuntimeError(f"train.py ended with {exit_code} (None: cut at the deadline); see train.log")
        if plan["benchmark_seconds"] > 0:
            stage = _stage(session, state, "benchmark")
            command = [
                sys.executable,
                "benchmarks/train_pipeline.py",
                "--no-hf",
                "--seconds",
                str(plan["benchmark_seconds"]),
                "--json",
                str(session.dir / "benchmark.json"),
            ]
            code = _run_child(command, session.dir / "benchmark.log", plan["deadline"])
            stage.update(end=_now(), exit_code=code)
        if plan["glue"]["seeds"]:
            stage = _stage(session, state, "glue")
            run_glue(session, plan, state)
            stage["end"] = _now()
        state["stage"] = "done"
    except BaseException as err:
        stop = isinstance(err, SystemExit)
        state.update(stage="failed", error="stopped by SIGTERM" if stop else f"{type(err).__name__}: {err}")
        raise
    finally:
        session.write_state(state)
        write_outputs(session)
        _log(session, f"pipeline {state['stage']}")
    return 0


# ---- the record and the progress line ----------------------------------------------------------------


def _records(path: Path) -> list[dict]:
    """The metrics.jsonl records that parse (a kill can tear the last line)."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def _tail(path: Path, lines: int) -> list[str]:
    return clean_log(path.read_text(errors="replace")).splitlines()[-lines:] if path.is_file() else []


def clean_log(text: str) -> str:
    """A log without the intermediate states of its progress bars (tqdm rewrites a line with \\r)."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n"))


def glue_job_record(session: Session, key: str, job: dict) -> dict:
    """One GLUE job's status, time, steps, training losses and dev scores (not its model config)."""
    record = {k: job.get(k) for k in ("task", "seed", "status", "exit_code")}
    if "start" in job and "end" in job:
        record["seconds"] = round(job["end"] - job["start"], 1)
    task = _read_json(session.glue / key / "results.json", {}).get("tasks", {}).get(job["task"], {})
    for field in ("steps", "train_examples", "train_loss_per_epoch", "dev", "error", "checkpoint_step"):
        if field in task:
            record[field] = task[field]
    if record["status"] == "failed":
        record["log_tail"] = _tail(session.glue / f"{key}.log", 15)
    return record


def record(session: Session) -> dict:
    """The session's self-contained record from its files (a snapshot while the pipeline still runs)."""
    plan, state = session.plan(), session.state()
    train_stage = state["stages"].get("train", {})
    train = {
        "exit_code": train_stage.get("exit_code"),
        "records": _records(session.workdir / "metrics.jsonl"),
    }
    if train_stage.get("exit_code") not in (None, 0) or state["stage"] == "failed":
        train["log_tail"] = _tail(session.dir / "train.log", 30)
    stages = {
        name: {"seconds": round(s.get("end", _now()) - s["start"], 1), "done": "end" in s}
        for name, s in state["stages"].items()
    }
    return {
        "format": RECORD_FORMAT,
        "name": plan["name"],
        "model": plan["model"],
        "config_file": plan["config_file"],
        "train_flags": plan["train_flags"],
        "commit": plan["commit"],
        "machine": plan["machine"],
        "config": plan["config"],
        "data": plan["data"],
        "stage": state["stage"],
        "error": state.get("error"),
        "stages": {"unpack": {"seconds": plan["unpack_s"], "done": True}, **stages},
        "written_after_s": round(_now() - plan["created"], 1),
        "train": train,
        "glue": {
            "seeds": plan["glue"]["seeds"],
            "parallel": plan["glue"]["parallel"],
            "flags": plan["glue"]["flags"],
            "jobs": [glue_job_record(session, key, job) for key, job in state["jobs"].items()],
        },
        "benchmark": _read_json(session.dir / "benchmark.json"),
    }


def write_outputs(session: Session) -> list[Path]:
    """The record and the logs in out/ (what a call brings back): at most 5 files."""
    session.out.mkdir(exist_ok=True)
    name = session.name
    _write_json(session.out / f"repro_{name}.json", record(session))
    glue_logs = []
    for log in sorted(session.glue.glob("*.log")):
        glue_logs.append(f"=== {log.stem}\n{clean_log(log.read_text(errors='replace'))}")
    (session.out / f"{name}-glue.log").write_text("\n".join(glue_logs) + "\n")
    for source, target in (
        (session.dir / "train.log", f"{name}-train.log"),
        (session.dir / "session.log", f"{name}-session.log"),
        (session.workdir / "loss.png", f"{name}-loss.png"),
    ):
        if source.is_file():
            shutil.copyfile(source, session.out / target)
    return sorted(session.out.iterdir())


def progress_line(session: Session) -> str:
    plan, state = session.plan(), session.state()
    parts = [f"+{_now() - plan['created']:.0f}s {state['stage']}"]
    records = _records(session.workdir / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    if train:
        r = train[-1]
        parts.append(
            f"step {r['step']:,} p {r.get('progress', 0):.2f} loss {r['train/loss']:.3f} "
            f"batch {r.get('batch')} {r.get('tokens_per_s', 0):,.0f} tok/s"
        )
    if evals:
        parts.append(f"held-out {evals[-1]['eval/loss']:.3f} at step {evals[-1]['step']:,}")
    if state["jobs"]:
        counts = collections.Counter(job["status"] for job in state["jobs"].values())
        parts.append("GLUE " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return " | ".join(parts)


def wait(session: Session, seconds: float, every: float, out: str | None) -> int:
    """Progress lines until the pipeline ends or `seconds` pass; then the outputs, copied into `out`."""
    until = _now() + seconds
    while True:
        finished = session.state()["stage"] in FINAL_STAGES
        alive = session.alive()
        print(progress_line(session), flush=True)
        if finished or not alive or _now() >= until:
            break
        time.sleep(max(min(every, until - _now()), 0.1))
    if not finished and not alive:
        print(f"the pipeline process has ended without finishing: see {session.dir / 'session.log'}")
    files = write_outputs(session)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copyfile(path, Path(out) / path.name)
    state = session.state()
    print(f"{session.name}: {state['stage']}; outputs: {' '.join(p.name for p in files)}")
    if state.get("error"):
        print(f"error: {state['error']}")
    return 1 if state["stage"] == "failed" or not (finished or alive) else 0


def stop(session: Session) -> int:
    pid = _read_json(session.dir / "pid.json", {}).get("pid")
    if pid is None or not session.alive():
        print(f"{session.name}: no pipeline runs")
        return 0
    os.killpg(pid, signal.SIGTERM)  # the pipeline leads its own process group (setsid)
    print(f"{session.name}: sent SIGTERM to process group {pid}")
    return 0


# ---- command line ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, named: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        if named:
            sub.add_argument("name", help="the session's name (start: the model, unless --name)")
        sub.add_argument("--root", default="runs", help="where runs/session-NAME lies (default %(default)s)")
        return sub

    def waits(sub: argparse.ArgumentParser, default_wait: float) -> None:
        sub.add_argument("--wait", type=float, default=default_wait, help="seconds to wait at most")
        sub.add_argument("--every", type=float, default=60.0, help="seconds between progress lines")
        sub.add_argument("--out", help="copy the record and logs here (on the device machine: $OUT)")

    go = command("start", "unpack, launch the pipeline, wait (train.py's --config.* flags after --)", False)
    go.add_argument("model", help="crammedbert-3072 or ultrafastbert-1x11 (configs/h200_<model>.py)")
    go.add_argument("--name", help="the session's name (default: the model)")
    go.add_argument("--config", help="train config file (default: configs/h200_<model>.py)")
    go.add_argument("--commit", help="the git commit of the working tree (the device's copy has no .git)")
    go.add_argument("--travel", default=".device", help="the compressed data (default %(default)s)")
    go.add_argument("--data", default="runs/h200-data", help="where it unpacks (default %(default)s)")
    go.add_argument("--unpack_workers", type=int, default=None, help="unpacking processes (default: cores)")
    go.add_argument("--glue_seeds", help="TASK=N,... (default configs/glue_h200.SEEDS; '' for no GLUE)")
    go.add_argument("--glue_parallel", type=int, default=8, help="GLUE processes side by side")
    go.add_argument("--glue_flags", default="", help="extra eval_glue.py flags, space-separated")
    go.add_argument("--benchmark_seconds", type=float, default=0, help="> 0: benchmarks/train_pipeline.py")
    go.add_argument("--deadline_min", type=float, default=24.0, help="GLUE is cut this long after start")
    go.add_argument("--restart", action="store_true", help="replace an ended session of the same name")
    waits(go, 0.0)
    waits(command("wait", "progress until the pipeline ends or --wait seconds pass; outputs to --out"), 0.0)
    command("stop", "end the pipeline and its processes")
    command("record", "write the record and logs into runs/session-NAME/out")
    command("pipeline", "(run by start) the background pipeline")
    args = parser.parse_args(argv)

    if args.command == "start":
        return start(args, train_flags)
    session = Session(args.root, args.name)
    if args.command == "wait":
        return wait(session, args.wait, args.every, args.out)
    if args.command == "stop":
        return stop(session)
    if args.command == "record":
        print("\n".join(str(p) for p in write_outputs(session)))
        return 0
    return pipeline(session)


if __name__ == "__main__":
    sys.exit(main())
