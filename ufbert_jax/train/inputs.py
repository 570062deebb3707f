"""The training and evaluation batches of a config: token shards prepared from config.data, then MLM batches.

Each process reads its own slice of the rows (shard_index = process index) and `microbatch / processes`
sequences of each microbatch. The last `eval_batches x microbatch` rows are held out for evaluation when
the run evaluates (`held_out_rows`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable
from pathlib import Path

import grain
import jax
import ml_collections

from ufbert_jax import workdir as workdir_lib
from ufbert_jax.config import ModelConfig
from ufbert_jax.data import loader, shards
from ufbert_jax.data.tokenizer import SpecialIds, check_vocabulary, load_tokenizer


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

    0 when the run never evaluates (eval_every = 0); a ValueError when they would be half the corpus or more.
    """
    if not config.eval_every:
        return 0
    rows = config.eval_batches * config.microbatch
    if 2 * rows > total_rows:
        raise ValueError(
            f"evaluation holds out eval_batches x microbatch = {rows} rows, but the shards have only "
            f"{total_rows}: lower eval_batches or add text"
        )
    return rows


def make_batches(config: ml_collections.ConfigDict, workdir: Path, model_cfg: ModelConfig) -> Batches:
    """Prepares (or reuses) the token shards of config.data and returns the batches read from them.

    The tokenizer is the workdir's tokenizer.json where it has one (a converted checkpoint, or an earlier
    run), else config.data.tokenizer (trained on the corpus first if it does not exist).
    """
    processes = jax.process_count()
    if config.microbatch % processes:
        raise ValueError(f"microbatch={config.microbatch} must be a multiple of the {processes} processes")
    tokenizer = workdir_lib.tokenizer_path(workdir)
    if not tokenizer.is_file():
        tokenizer = Path(config.data.tokenizer)
    shard_dir = shards.prepare_shards(
        list(config.data.sources),
        config.data.shard_dir,
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
