"""GLUE fine-tuning speed: steps/s of eval_glue's training at the recipe's batch (16 x 128), side by side.

    python benchmarks/finetune_step.py [--models crammedbert-3072 ultrafastbert-1x11:auto] [--json out.json]
    python benchmarks/finetune_step.py --tiny     # a seconds-long check on CPU

For each model (PRESET[:FFF_IMPL]), two timings on synthetic 128-token examples and random weights (the
speed does not depend on the weights):
  * "finetune": ``ufbert_jax.glue.finetune.train`` itself, as eval_glue.py runs it: bucketing, host batches,
    the per-step learning rate, the progress bar and the jitted train step; run once to compile, then timed
    over a second run of the same steps;
  * "bare": the same ``finetune.train_step`` called again and again on one device-resident batch through
    ``nnx.cached_partial``, waited for at the end: the step with nothing around it.
Prints steps/s, the finetune/bare efficiency, and each model's steps/s over the first model's.
The recipe is configs/glue.py's (batch 16, max_len 128, dropout 0.1, AdamW), with bfloat16 compute on a GPU.
On the GPU machine, after `source reproduce/gpu_env.sh`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm's import, which reads it: finetune.train's bars

import jax
import jax.numpy as jnp
import numpy as np
import train_throughput
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # configs/ is not a package
from configs import glue as glue_config
from ufbert_jax.config import preset
from ufbert_jax.glue import finetune
from ufbert_jax.model import SequenceClassifier

MODELS = ("crammedbert-3072", "ultrafastbert-1x11:masked", "ultrafastbert-1x11:auto")
PAD_ID = 0


def examples(rng: np.random.Generator, count: int, length: int, vocab: int) -> list[np.ndarray]:
    """`count` token sequences of exactly `length` ids (no padding id among them): one bucket, full rows."""
    return list(rng.integers(PAD_ID + 1, vocab, (count, length)).astype(np.int32))


def measure(name: str, args, recipe: finetune.Recipe) -> dict:
    preset_name, _, impl = name.partition(":")
    preset_name = train_throughput.TINY.get(preset_name, preset_name) if args.tiny else preset_name
    cfg = preset(preset_name, dtype=args.dtype, fff_impl=impl or "auto", dropout=recipe.dropout)
    rng = np.random.default_rng(0)
    sequences = examples(rng, args.steps * recipe.batch_size, recipe.max_len, cfg.vocab_size)
    labels = rng.integers(0, 2, len(sequences)).astype(np.int32)
    model = SequenceClassifier(cfg, 2, nnx.Rngs(params=0, dropout=1))
    finetune.train(model, sequences, labels, recipe, PAD_ID, False, "warm-up")  # compiles the step
    start = time.perf_counter()
    finetune.train(model, sequences, labels, recipe, PAD_ID, False, "timed")
    finetune_s = (time.perf_counter() - start) / args.steps

    optimizer = nnx.Optimizer(
        model, finetune.adamw(recipe.b1, recipe.b2, recipe.eps, recipe.weight_decay), wrt=nnx.Param
    )
    model.train()
    step = nnx.cached_partial(finetune.train_step, model, optimizer)
    batch = jax.device_put(
        {
            "token_ids": np.stack(sequences[: recipe.batch_size]),  # [B, S]
            "attention_mask": np.ones((recipe.batch_size, recipe.max_len), bool),  # [B, S]
            "labels": labels[: recipe.batch_size],  # [B]
            "weights": np.ones(recipe.batch_size, np.float32),  # [B]
        }
    )
    lr = jnp.float32(recipe.lr)
    step(batch, lr, False).block_until_ready()  # compiles this call path
    samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step(batch, lr, False)
        loss.block_until_ready()
        samples.append((time.perf_counter() - start) / args.steps)
    bare_s = statistics.median(samples)
    return {"model": name, "finetune_steps_per_s": 1 / finetune_s, "bare_steps_per_s": 1 / bare_s}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--steps", type=int, default=200, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the bare step (median)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 elsewhere")
    parser.add_argument("--tiny", action="store_true", help="tiny presets, 20 steps: checks it on CPU")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32")
    if args.tiny:
        args.steps = min(args.steps, 20)
    recipe = finetune.Recipe.for_task(glue_config.get_config(), "sst2")
    recipe = finetune.Recipe(**{**vars(recipe), "epochs": 1})
    device = jax.devices()[0].device_kind
    print(f"device: {device} ({jax.default_backend()}), jax {jax.__version__}, {args.dtype}, "
          f"batch {recipe.batch_size} x {recipe.max_len}, {args.steps} steps per run")  # fmt: skip
    rows = [measure(name, args, recipe) for name in args.models]
    first = rows[0]["finetune_steps_per_s"]
    for row in rows:
        row["efficiency"] = row["finetune_steps_per_s"] / row["bare_steps_per_s"]
        row["vs_first"] = row["finetune_steps_per_s"] / first
        print(f"{row['model']:<28} finetune {row['finetune_steps_per_s']:>7.1f} steps/s   "
              f"bare {row['bare_steps_per_s']:>7.1f} steps/s   finetune/bare {row['efficiency']:.2f}   "
              f"{row['vs_first']:.2f}x {rows[0]['model']}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
