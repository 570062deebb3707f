"""train.py's real loop against its bare step, side by side in one process: where the loop loses speed.

    python benchmarks/train_pipeline.py --tiny                   # CPU: configs/tiny.py, under 2 minutes
    python3 benchmarks/train_pipeline.py --seconds 90 --json $OUT/pipeline.json      # GPU machine

For each config:
1. The real loop: `ufbert_jax.train.loop.train`, the function train.py runs, on the config's shards and
   tokenizer (`inputs.make_batches`: grain masking workers), with its batch ramp and accumulation, logging,
   evaluation and checkpointing as the config sets them, for a time budget of --seconds (the ramp and the
   learning-rate schedule are fractions of the budget, so they shrink with it), in a fresh temporary
   workdir. Its rate is the median of the tokens/s of its log records (what a user reads in metrics.jsonl;
   windows holding a compilation or an evaluation are the slow outliers the median skips) and, beside it,
   the whole run's (every token over the loop's wall time, compilation and evaluation included).
2. The bare step: the same `train_step` on state built by `loop.init_state` (the trainer's own function),
   on device-resident batches from the same loader, run back to back: --steps steps per timed loop, median
   of 3 loops. Each step applies an optimizer update (the loop's accumulating steps are cheaper).
3. Where the loop's host time went (`metrics.Phases`): waiting for input, copying it to the devices,
   dispatch, waiting for the device (the time the device sets, the good kind), metric reads, evaluation,
   checkpoints.
The last line is `pipeline efficiency: R`, R = real / bare, the lowest over the configs.

Without --tiny it runs configs/h200_crammedbert_3072.py and configs/h200_ultrafastbert_1x11.py (their data
in runs/h200-data: on the GPU machine `python3 -m reproduce.travel unpack` first) and, first, in a
process of its own so that JAX and PyTorch do not share the GPU's memory, the PyTorch peer
benchmarks/hf_train_peer.py (Hugging Face BertForMaskedLM, eager and compiled), when torch is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from ufbert_jax.train import checkpointing, inputs, loop, metrics
from ufbert_jax.train import mesh as mesh_lib
from ufbert_jax.train.optim import OptimizerConfig
from ufbert_jax.train.steps import train_step

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIGS = ("configs/tiny.py",)
GPU_CONFIGS = ("configs/h200_crammedbert_3072.py", "configs/h200_ultrafastbert_1x11.py")


def load_config(path: str) -> ml_collections.ConfigDict:
    """get_config() of a config file. The files import each other as the package `configs`, which resolves
    from the repository root (as for train.py, run from there)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def real_loop(config: ml_collections.ConfigDict, workdir: Path, batches: inputs.Batches) -> dict:
    """Runs train.py's loop in `workdir` on `batches`; its median and whole-run tokens/s and the host time by
    phase."""
    model_cfg = loop.model_config(config)
    checkpointing.prepare_workdir(workdir, model_cfg, batches.tokenizer)
    phases = metrics.Phases()
    start = time.perf_counter()
    loop.train(config, workdir, model_cfg, batches.train, batches.eval, phases=phases)
    wall = time.perf_counter() - start
    records = [r for r in metrics.MetricsLog(workdir).records() if "tokens_per_s" in r]
    steps = records[-1]["step"]
    return {
        "steps": steps,
        "wall_s": wall,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        "whole_run_tokens_per_s": steps * config.microbatch * config.seq_len / wall,
        "phases_s": phases.seconds,
    }


def bare_step(config: ml_collections.ConfigDict, loader: Iterator[dict], steps: int) -> dict:
    """tokens/s of back-to-back train steps on the trainer's state, on 4 batches of `loader` already on the
    devices."""
    model_cfg = loop.model_config(config)
    mesh = mesh_lib.make_mesh(config.num_devices)
    model, optimizer = loop.init_state(
        model_cfg, OptimizerConfig(**dict(config.optimizer)), config.seed, mesh
    )
    device_batches = [mesh_lib.global_batch(mesh, next(loader)) for _ in range(4)]
    step = nnx.cached_partial(train_step, model, optimizer)  # called as the trainer calls it
    run = lambda i: step(device_batches[i % 4], jnp.float32(1.0), apply_update=True)  # noqa: E731
    for i in range(3):  # compile and warm up
        jax.block_until_ready(run(i))
    loops = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(steps):
            out = run(i)
        jax.block_until_ready(out)
        loops.append((time.perf_counter() - start) / steps)
    step_s = statistics.median(loops)
    return {"step_ms": 1e3 * step_s, "tokens_per_s": config.microbatch * config.seq_len / step_s}


def hf_peer(json_path: Path) -> list[dict]:
    """benchmarks/hf_train_peer.py in its own process; [] where torch is missing or it fails."""
    if importlib.util.find_spec("torch") is None:
        print("Hugging Face peer: skipped (no torch here)")
        return []
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/hf_train_peer.py"), "--json", str(json_path)], check=False
    )
    if done.returncode:
        print(f"Hugging Face peer: failed with exit status {done.returncode}")
        return []
    return json.loads(json_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="configs/tiny.py on CPU (a check of the script)")
    parser.add_argument("--configs", nargs="+", help="config files (default: the H200 configs, or tiny)")
    parser.add_argument("--seconds", type=float, default=None, help="time budget of each real loop")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed loop of the bare step")
    parser.add_argument("--data_dir", help="where the shards and tokenizer go (default: the configs' paths)")
    parser.add_argument("--no-hf", action="store_true", help="skip the PyTorch peer")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    paths = args.configs or (TINY_CONFIGS if args.tiny else GPU_CONFIGS)
    seconds = args.seconds or (60.0 if args.tiny else 90.0)
    bare_steps = args.steps or (5 if args.tiny else 30)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")

    with tempfile.TemporaryDirectory(prefix="train_pipeline-") as tmp:
        peers = [] if args.tiny or args.no_hf else hf_peer(Path(tmp) / "hf.json")
        rows = []
        for path in paths:
            config = load_config(path)
            config.budget_hours, config.steps = seconds / 3600, 0
            if args.tiny:
                config.data.worker_count = 0
            if args.data_dir:
                config.data.shard_dir = str(Path(args.data_dir) / Path(config.data.shard_dir).name)
                config.data.tokenizer = str(Path(config.data.shard_dir) / "tokenizer.json")
            workdir = Path(tmp) / Path(path).stem
            batches = inputs.make_batches(config, workdir, loop.model_config(config))
            real = real_loop(config, workdir, batches)
            bare = bare_step(config, batches.train, bare_steps)  # the loader the real loop read
            rows.append({"config": path, "model": config.model, "real": real, "bare": bare})

    print(
        f"\n{'config':<38}{'steps':>7}{'real tok/s':>12}{'whole run':>11}{'bare tok/s':>12}{'real/bare':>10}"
    )
    for row in rows:
        real, bare = row["real"], row["bare"]
        print(
            f"{row['config']:<38}{real['steps']:>7}{real['tokens_per_s']:>12,.0f}"
            f"{real['whole_run_tokens_per_s']:>11,.0f}{bare['tokens_per_s']:>12,.0f}"
            f"{real['tokens_per_s'] / bare['tokens_per_s']:>10.2f}"
        )
    print("\nhost time of the real loop, seconds (share of its wall time):")
    print(f"{'config':<38}" + "".join(f"{name:>12}" for name in metrics.Phases.NAMES))
    for row in rows:
        wall, spent = row["real"]["wall_s"], row["real"]["phases_s"]
        print(f"{row['config']:<38}" + "".join(f"{spent[n]:>6.1f} ({spent[n] / wall:3.0%})" for n in spent))
    if len(rows) > 1:
        base = rows[0]["real"]["tokens_per_s"]
        for row in rows[1:]:
            ratio = row["real"]["tokens_per_s"] / base
            print(f"real tokens/s, {row['model']} / {rows[0]['model']}: {ratio:.2f}x")
    for peer in peers:
        print(f"{peer['model']}: {peer['step_ms']:.2f} ms/step, {peer['tokens_per_s']:,.0f} tokens/s")
        for row in rows:
            ratio = row["real"]["tokens_per_s"] / peer["tokens_per_s"]
            print(f"  real tokens/s, {row['model']} / {peer['model']}: {ratio:.2f}x")
    if args.json:
        device = jax.devices()[0].device_kind
        Path(args.json).write_text(
            json.dumps({"device": device, "seconds": seconds, "rows": rows, "peers": peers}, indent=2)
        )
    efficiency = min(row["real"]["tokens_per_s"] / row["bare"]["tokens_per_s"] for row in rows)
    print(f"pipeline efficiency: {efficiency:.2f}")


if __name__ == "__main__":
    main()
