"""The data of the reproduction (docs/RESULTS.md), prepared on a CPU machine: the whole corpus, packed and
compressed into a folder that travels to the GPU machine.

Reproduces the pretraining shards and the GLUE files that reproduce/session.py reads on the GPU. Run from
the repository root, as a module (the config's `from configs import ...` needs the root on the path):

    python -m reproduce.prepare_h200_data --config=configs/h200_crammedbert_3072.py

~7 minutes on 2 busy cores. The config (either H200 config: they share configs/h200_recipe.py) names the
corpus, the shard folder, the tokenizer path and the vocabulary size; the script makes them:

1. A WordPiece vocabulary (32768 tokens) trained on the whole corpus (Wikipedia + Gutenberg), unless the
   config's tokenizer file exists.
2. The whole corpus packed into shards of `--shard_rows` rows by `prepare_shards` (uint16 tokens), in the
   config's shard folder under `--plain`.
3. The GLUE tasks that exist offline (`--glue_tasks`), train and dev TSVs, copied in the original layout
   into `--plain`/glue.
4. Everything under `--plain` compressed into `--travel` (reproduce/travel.py: xz, ~57% of the shards), the
   folder the device command carries; reproduce/session.py unpacks it on the GPU machine.

Machine-specific defaults: the corpus (configs/h200_recipe.py) and `--glue_dir` are this project's shared
data beside the repository (../shared/data), and `--travel` is .device, the folder our device command
carries beside the repository and the wheels (at most 64 MiB in all); pass your own elsewhere.
Output: runs/h200-data/{shards-wiki-gutenberg-32768/{manifest.json, tokenizer.json, shard_*.npy}, glue/}
and .device/ (the same files, .xz, and TRAVEL.json). Rerunning it reuses the shards (prepare_shards checks
the manifest against the config's sources and tokenizer) and packs again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from configs import h200_recipe
from reproduce import travel
from ufbert_jax.data.shards import documents, prepare_shards, read_manifest
from ufbert_jax.data.tokenizer import train_wordpiece

config_flags.DEFINE_config_file("config", None, "an H200 train config (configs/h200_*.py)", lock_config=True)
flags.DEFINE_integer("shard_rows", 8192, "rows per packed shard (2 MiB at seq_len 128)")
flags.DEFINE_string("glue_dir", "../shared/data/glue", "GLUE in the original TSV layout")
flags.DEFINE_list("glue_tasks", ["CoLA", "SST-2", "MRPC", "STS-B", "RTE"], "task folders to copy")
flags.DEFINE_string("plain", h200_recipe.DATA, "the plain data: the config's shard folder lies in it")
flags.DEFINE_string("travel", str(travel.TRAVEL), "the compressed copy that travels (emptied first)")
flags.DEFINE_integer("workers", None, "tokenizer and compression processes (default: all cores)")
flags.mark_flags_as_required(["config"])


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
    plain, shard_dir, tokenizer = Path(args.plain), Path(config.data.shard_dir), Path(config.data.tokenizer)
    if not shard_dir.resolve().is_relative_to(plain.resolve()):
        raise ValueError(f"the config's shard_dir {shard_dir} must lie in --plain={plain} to travel")
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
    copy_glue(Path(args.glue_dir), plain / "glue", args.glue_tasks)
    index = travel.pack(plain, args.travel, args.workers)

    manifest = read_manifest(shard_dir)
    tokens = manifest["rows"] * manifest["seq_len"]
    shard_files = [f"{shard_dir.relative_to(plain).as_posix()}/{s['file']}" for s in manifest["shards"]]
    raw, packed = (sum(index["files"][name][key] for name in shard_files) for key in ("bytes", "xz_bytes"))
    print(
        f"{shard_dir}: vocabulary {manifest['vocab_size']}, {len(shard_files)} shards, {manifest['rows']:,} "
        f"rows = {tokens:,} tokens, {np.dtype(manifest['dtype']).name}: {raw / 2**20:.1f} MiB, "
        f"{packed / 2**20:.1f} MiB as xz ({packed / raw:.1%}); {args.travel} in all: "
        f"{index['xz_bytes'] / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    app.run(main)
