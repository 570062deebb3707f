"""The data of the H200 reproduction (docs/RESULTS.md), prepared on a CPU machine into a folder that travels.

Reproduces the pretraining shards and the GLUE files that reproduce/reproduce_h200.sh reads on the H200.
Run from the repository root, as a module (the config's `from configs import ...` needs the root on the
path):

    python -m reproduce.prepare_h200_data --config=configs/h200_crammedbert_3072.py

~7 minutes on 2 busy cores. The config (either H200 config: they share configs/h200_recipe.py) names the
corpus, the shard folder, the tokenizer path and the vocabulary size; the script makes them:

1. A WordPiece vocabulary (32768 tokens) trained on the whole corpus (Wikipedia + Gutenberg).
2. The whole corpus packed into shards of `--shard_rows` rows by `prepare_shards` (uint16 tokens).
3. An evenly spread subset of those shards kept (`--keep` of them, the first and the last among them): the
   device command carries at most 64 MiB with the repository and the wheels, and the loader reads plain
   .npy files only. The manifest then lists the kept shards (its `rows` counts them) and records the
   subsample under "subsample"; its sources stay those of the packing, which the configs repeat.
4. The GLUE tasks that exist offline (`--glue_tasks`), train and dev TSVs, copied in the original layout
   into `--glue_out`.

Machine-specific defaults: the corpus (configs/h200_recipe.py) and `--glue_dir` are this project's shared
data beside the repository (../shared/data), and `--keep` fits the 64 MiB that our device command carries;
pass your own elsewhere.

Output: .device/shards-wiki-gutenberg-32768/{manifest.json, tokenizer.json, shard_*.npy}, .device/glue/.
Rerunning it is a no-op (prepare_shards checks the manifest against the config's sources and tokenizer).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from ufbert_jax import io
from ufbert_jax.data.shards import MANIFEST_FILE, documents, prepare_shards, read_manifest
from ufbert_jax.data.tokenizer import train_wordpiece

config_flags.DEFINE_config_file("config", None, "an H200 train config (configs/h200_*.py)", lock_config=True)
flags.DEFINE_integer("shard_rows", 8192, "rows per packed shard (2 MiB at seq_len 128)")
flags.DEFINE_integer("keep", 13, "shards kept (13 x 2 MiB = 26 MiB)")
flags.DEFINE_string("glue_dir", "../shared/data/glue", "GLUE in the original TSV layout")
flags.DEFINE_string("glue_out", ".device/glue", "where the copied tasks go")
flags.DEFINE_list("glue_tasks", ["CoLA", "SST-2", "MRPC", "STS-B", "RTE"], "task folders to copy")
flags.DEFINE_integer("workers", None, "tokenizer processes (default: all cores)")
flags.mark_flags_as_required(["config"])


def spread(total: int, keep: int) -> list[int]:
    """`keep` indices out of range(total), evenly spread, first and last included (all if keep >= total)."""
    if keep >= total:
        return list(range(total))
    if keep < 2:
        raise ValueError(f"keep={keep}: expected at least 2 shards (the first and the last)")
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def subsample_shards(shard_dir: Path, keep: int) -> dict:
    """Deletes all but `keep` evenly spread shards of `shard_dir` and rewrites its manifest to list them.

    Running it again on a subsampled folder keeps it as it is (the recorded subsample is the answer)."""
    manifest = read_manifest(shard_dir)
    if "subsample" in manifest:
        return manifest
    shards = manifest["shards"]
    kept = spread(len(shards), keep)
    for index, shard in enumerate(shards):
        if index not in kept:
            (shard_dir / shard["file"]).unlink()
    subsample = {
        "packed_shards": len(shards),
        "packed_rows": manifest["rows"],
        "kept": kept,
        "how": "evenly spread whole shards of the packed corpus (reproduce/prepare_h200_data.py)",
    }
    new = {**manifest, "shards": [shards[i] for i in kept], "subsample": subsample}
    new["rows"] = sum(s["rows"] for s in new["shards"])
    io.write_text(shard_dir / MANIFEST_FILE, json.dumps(new, indent=2) + "\n")
    return new


def copy_glue(glue_dir: Path, out: Path, tasks: list[str]) -> None:
    for task in tasks:
        (out / task).mkdir(parents=True, exist_ok=True)
        for split in ("train.tsv", "dev.tsv"):
            source = glue_dir / task / split
            if not source.is_file():
                raise FileNotFoundError(f"{source} not found: expected the GLUE TSV layout in {glue_dir}")
            shutil.copyfile(source, out / task / split)


def main(argv) -> None:
    del argv
    config, args = flags.FLAGS.config, flags.FLAGS
    sources = list(config.data.sources)
    shard_dir, tokenizer = Path(config.data.shard_dir), Path(config.data.tokenizer)
    if not tokenizer.is_file():
        docs = tqdm(documents(sources), desc="training tokenizer", unit="doc")
        train_wordpiece(docs, config.model_overrides.vocab_size, tokenizer)
    prepare_shards(
        sources,
        shard_dir,
        tokenizer,
        seq_len=config.seq_len,
        shard_size=args.shard_rows,
        num_workers=args.workers,
    )
    manifest = subsample_shards(shard_dir, args.keep)
    copy_glue(Path(args.glue_dir), Path(args.glue_out), args.glue_tasks)

    tokens = manifest["rows"] * manifest["seq_len"]
    mib = sum((shard_dir / s["file"]).stat().st_size for s in manifest["shards"]) / 2**20
    packed = manifest["subsample"]["packed_rows"] * manifest["seq_len"]
    print(
        f"{shard_dir}: vocabulary {manifest['vocab_size']}, {len(manifest['shards'])} of "
        f"{manifest['subsample']['packed_shards']} shards, {manifest['rows']} rows = {tokens:,} tokens "
        f"({tokens / packed:.1%} of the {packed:,} packed), {mib:.1f} MiB; dtype "
        f"{np.dtype(manifest['dtype']).name}"
    )


if __name__ == "__main__":
    app.run(main)
