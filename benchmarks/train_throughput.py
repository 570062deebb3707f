"""Pretraining throughput: crammedBERT-3072 against UltraFastBERT-1x11 (masked and sparse FFF), side by side.

    python benchmarks/train_throughput.py [--batch 128] [--steps 20] [--json out.json]
    python benchmarks/train_throughput.py --tiny      # a seconds-long check on CPU

Times the real train step (ufbert_jax.train.steps.train_step: sparse-prediction MLM loss, gradient,
clipped AdamW update, donated state) on synthetic token batches, no data pipeline: 16 layers, hidden 768,
vocabulary 32768, 128-token sequences, bf16 compute with float32 parameters. A model is named
PRESET[:FFF_IMPL] (ufbert_jax.fff_names.IMPLS; default "auto", the training configs' choice: the Pallas
training kernels on a GPU, the sparse form on CPU). Reports the median step time after warm-up, tokens/s,
model TFLOP/s and MFU (model FLOPs as in ufbert_jax.train.metrics.train_flops_per_token: the FFF counted as a
dense layer of K*N neurons, so the sparse FFF's MFU reads above what its hardware does), and the ratio of
the first model's step time to each model's (the speedup over the first).
The state is built by the trainer's own ufbert_jax.train.loop.init_state; benchmarks/train_pipeline.py times
this step beside the real loop. On the GPU machine, after `source reproduce/gpu_env.sh` (grain and
ml_collections, which the trainer imports, travel as wheels).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ufbert_jax.config import preset
from ufbert_jax.model import count_params
from ufbert_jax.train import loop, metrics, optim
from ufbert_jax.train import mesh as mesh_lib
from ufbert_jax.train.steps import train_step

MODELS = ("crammedbert-3072", "ultrafastbert-1x11:masked", "ultrafastbert-1x11:auto")
TINY = {"crammedbert-3072": "tiny-dense", "ultrafastbert-1x11": "tiny-fff"}  # --tiny: config.TINY_PRESETS


def synthetic_batch(rng: np.random.Generator, batch: int, seq_len: int, vocab: int) -> dict[str, np.ndarray]:
    """Random tokens with round(0.25 * S) distinct predicted positions per row (the recipe's P)."""
    predictions = round(0.25 * seq_len)
    positions = np.argsort(rng.random((batch, seq_len)), axis=1)[:, :predictions]  # [B, P]
    return {
        "input_ids": rng.integers(8, vocab, (batch, seq_len)).astype(np.int32),  # [B, S]
        "positions": positions.astype(np.int32),
        "labels": rng.integers(8, vocab, (batch, predictions)).astype(np.int32),  # [B, P]
    }


def measure(name: str, args) -> dict:
    preset_name, _, impl = name.partition(":")
    preset_name = TINY.get(preset_name, preset_name) if args.tiny else preset_name
    cfg = preset(preset_name, dtype=args.dtype, fff_impl=impl or "auto")
    seq_len = min(args.seq_len, cfg.max_len)
    mesh = mesh_lib.make_mesh(1)
    model, optimizer = loop.init_state(cfg, optim.OptimizerConfig(), 0, mesh)  # the trainer's state
    batch = synthetic_batch(np.random.default_rng(0), args.batch, seq_len, cfg.vocab_size)
    batch = mesh_lib.global_batch(mesh, batch)
    multiplier = jnp.float32(1.0)
    if args.dispatch == "cached":  # as the training loop calls it
        step = nnx.cached_partial(train_step, model, optimizer)
    else:
        step = functools.partial(train_step, model, optimizer)
    compile_start = time.perf_counter()
    for _ in range(args.warmup):
        loss = step(batch, multiplier, apply_update=True)["loss"]
    loss.block_until_ready()
    warmup_s = time.perf_counter() - compile_start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(batch, multiplier, apply_update=True)["loss"].block_until_ready()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens = args.batch * seq_len
    flops = metrics.train_flops_per_token(cfg, seq_len, round(0.25 * seq_len)) * tokens / step_s
    peak = metrics.peak_flops(jax.devices()[0].device_kind, cfg.dtype)
    return {
        "model": name,
        "params": count_params(model),
        "tokens_per_step": tokens,
        "step_ms": 1e3 * step_s,
        "step_ms_min_max": (1e3 * min(times), 1e3 * max(times)),
        "tokens_per_s": tokens / step_s,
        "model_tflops": flops / 1e12,
        "mfu": flops / peak if peak else None,
        "warmup_s": warmup_s,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="sequences per step (the recipe's microbatch)")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation included)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--dispatch",
        choices=("cached", "nnx"),
        default="cached",
        help="cached: nnx.cached_partial, as train.py; nnx: plain nnx.jit calls (graph walk at every step)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: checks the script on CPU")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    rows = [measure(name, args) for name in args.models.split(",")]
    base = rows[0]["step_ms"]
    print(
        f"{'model':<27}{'params':>13}{'tokens/step':>13}{'ms/step':>10}{'tokens/s':>12}"
        f"{'TFLOP/s':>9}{'MFU':>7}{'speedup vs first':>18}"
    )
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        print(
            f"{row['model']:<27}{row['params']:>13,}{row['tokens_per_step']:>13,}{row['step_ms']:>10.2f}"
            f"{row['tokens_per_s']:>12,.0f}{row['model_tflops']:>9.1f}{mfu:>7}{base / row['step_ms']:>17.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
