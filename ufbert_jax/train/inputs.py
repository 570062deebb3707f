"""The training and evaluation batches of a config: token shards prepared from config.data, then MLM batches.

Where the data goes (`data_paths`): config.data.shard_dir and config.data.tokenizer when given; empty, they
are derived, so that changing only config.data.sources gives new shards and a tokenizer trained on the new
corpus. The tokenizer is the workdir's (a converted checkpoint or an earlier run), else data.tokenizer,
else SHARD_FOLDER/tokenizer.json; the shard folder is data.shard_dir, else DERIVED_ROOT/NAME-V-HASH
(ufbert_jax.data.shards.folder_name), whose hash covers the sources, the vocabulary size, seq_len and,
for a tokenizer that was not trained on these sources there, the tokenizer file's sha256.

Each process reads its own slice of the rows (shard_index = process index) and `microbatch / processes`
sequences of each microbatch. The last `eval_batches x microbatch` rows are held out for evaluation when
the run evaluates (`held_out_rows`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import grain
import jax
import ml_collections

from ufbert_jax import workdir as workdir_lib
from ufbert_jax.config import ModelConfig
from ufbert_jax.data import loader, shards
from ufbert_jax.data.tokenizer import TOKENIZER_FILE, SpecialIds, check_vocabulary, load_tokenizer

log = logging.getLogger("ufbert_jax.train")

#: Where derived shard folders go (relative to the working directory, as the configs' paths are).
DERIVED_ROOT = Path("runs/shards")


@dataclasses.dataclass(frozen=True)
class Batches:
    """What `make_batches` returns.

    train: this process's rows of each microbatch ({"input_ids" [B, S], "positions" [B, P], "labels"
    [B, P]} numpy arrays), with JSON-serialisable get_state()/set_state(); eval: None when the run never
    evaluates, else a function returning a fresh iterable of such batches over the held-out rows;
    tokenizer: the tokenizer.json the shards were made with.
    """

    train: grain.DatasetIterator
    eval: Callable[[], Iterable[dict]] | None
    tokenizer: Path


def held_out_rows(config: ml_collections.ConfigDict, total_rows: int) -> int:
    """Rows at the end of the shards kept out of training for evaluation: eval_batches microbatches.

    0 when the run never evaluates (eval_every = 0); a ValueError, stating the rule and what to change, when
    they would be more than half of the rows (training keeps at least the other half).
    """
    if not config.eval_every:
        return 0
    rows = config.eval_batches * config.microbatch
    if 2 * rows > total_rows:
        fits = total_rows // (2 * config.microbatch)
        lower = f"--config.eval_batches={fits}, " if fits else ""
        raise ValueError(
            f"evaluation would hold out eval_batches x microbatch = {config.eval_batches} x "
            f"{config.microbatch} = {rows} rows, but at most half of the shards' {total_rows} rows "
            f"({total_rows // 2}) may be held out, so that training keeps the rest: set {lower}"
            "--config.eval_every=0 (no evaluation), or add text to --config.data.sources"
        )
    return rows


def data_paths(config: ml_collections.ConfigDict, workdir: Path, vocab_size: int) -> tuple[Path, Path]:
    """(shard folder, tokenizer file) of a run: as given in config.data, else derived (module docstring)."""
    if workdir_lib.tokenizer_path(workdir).is_file():
        tokenizer = workdir_lib.tokenizer_path(workdir)
    else:
        tokenizer = Path(config.data.tokenizer) if config.data.tokenizer else None
    if config.data.shard_dir:
        shard_dir = Path(config.data.shard_dir)
        return shard_dir, tokenizer or shard_dir / TOKENIZER_FILE
    sources = [str(spec) for spec in config.data.sources]
    # A folder of its own for a corpus, a vocabulary size and a sequence length, with a tokenizer trained
    # on that corpus (the one to be trained here, or a copy of it) ...
    trained_here = DERIVED_ROOT / shards.folder_name(sources, vocab_size, config.seq_len)
    if tokenizer is None or not tokenizer.is_file() or _same_bytes(trained_here / TOKENIZER_FILE, tokenizer):
        return trained_here, tokenizer or trained_here / TOKENIZER_FILE
    # ... and one for that corpus with another tokenizer (a converted checkpoint's, or one given).
    return DERIVED_ROOT / shards.folder_name(
        sources, vocab_size, config.seq_len, shards.file_sha256(tokenizer)
    ), tokenizer


def _same_bytes(a: Path, b: Path) -> bool:
    return a.is_file() and shards.file_sha256(a) == shards.file_sha256(b)


def make_batches(config: ml_collections.ConfigDict, workdir: Path, model_cfg: ModelConfig) -> Batches:
    """Prepares (or reuses) the token shards of config.data and returns the batches read from them.

    The shard folder and tokenizer are `data_paths`'; a tokenizer that does not exist yet is trained on
    the corpus first.
    """
    processes = jax.process_count()
    if config.microbatch % processes:
        raise ValueError(f"microbatch={config.microbatch} must be a multiple of the {processes} processes")
    shard_dir, tokenizer = data_paths(config, workdir, model_cfg.vocab_size)
    log.info("data: shards %s, tokenizer %s", shard_dir, tokenizer)
    shard_dir = shards.prepare_shards(
        list(config.data.sources),
        shard_dir,
        tokenizer,
        seq_len=config.seq_len,
        vocab_size=model_cfg.vocab_size,
    )
    vocab = load_tokenizer(tokenizer)
    check_vocabulary(vocab, model_cfg.vocab_size, str(tokenizer))
    options = dict(
        batch_size=config.microbatch // processes,
        special=SpecialIds.of(vocab),
        vocab_size=vocab.get_vocab_size(),
        shard_index=jax.process_index(),
        shard_count=processes,
    )
    total_rows = len(shards.TokenShards(shard_dir))
    held_out = held_out_rows(config, total_rows)
    train_rows = (0, total_rows - held_out)
    train = loader.mlm_batches(
        shard_dir, seed=config.seed, worker_count=config.data.worker_count, rows=train_rows, **options
    )

    def eval_batches() -> Iterable[dict]:
        # The held-out tail of the shards, never trained on, masked with its own seed.
        tail = (total_rows - held_out, total_rows)
        held = loader.mlm_batches(shard_dir, seed=config.seed + 1, num_epochs=1, rows=tail, **options)
        return itertools.islice(held, config.eval_batches)

    return Batches(train, eval_batches if held_out else None, tokenizer)
