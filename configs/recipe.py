"""The pretraining recipe shared by every config: cramming's "bert-o4" as used for UltraFastBERT.

Not a config to run by itself: configs/ultrafastbert_1x11.py, crammedbert_3072.py and tiny.py build on
`base_config()`. Every field is overridable as --config.FIELD=VALUE; FIELDS below says what each one does
(the one place: `python train.py --config=FILE --show_config` prints it beside every value). The corpus,
data.sources, is a tuple of specs: on the command line one spec (--config.data.sources=hf:NAME), the flag
repeated, or a tuple literal '("/path/a","/path/b")'.
"""

import dataclasses

import ml_collections

from ufbert_jax.train.optim import OptimizerConfig


def base_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            model="ultrafastbert-1x11",
            model_overrides=dict(dtype="bfloat16", fff_impl="auto"),
            data=dict(
                sources=("data/sample",),
                shard_dir="",
                tokenizer="",
                worker_count=0,
            ),
            seq_len=128,
            microbatch=128,
            final_batch=8192,
            ramp_fraction=0.6,
            steps=0,
            budget_hours=24.0,
            optimizer=dataclasses.asdict(OptimizerConfig()),
            checkpoint_every=2000,
            keep_checkpoints=3,
            log_every=100,
            eval_every=20000,
            eval_batches=50,
            seed=0,
            num_devices=0,
            progress_bar=True,
            distributed=dict(initialize=False, coordinator_address="", num_processes=0, process_id=-1),
        )
    )


#: One line per field of base_config(): what it does (train.py --show_config prints these).
FIELDS = {
    "model": "model preset (ufbert_jax.config.preset: ultrafastbert-KxD, crammedbert-3072, tiny-fff, ...)",
    "model_overrides": "ModelConfig fields that replace the preset's (dtype, fff_impl, vocab_size, ...)",
    "data.sources": "corpus: a tuple of specs (folders or files of text, hf:NAME, tfds:NAME; docs/data.md)",
    "data.shard_dir": "folder of the packed token shards; empty: runs/shards/NAME-V-HASH of the corpus, "
    "the vocabulary size and seq_len",
    "data.tokenizer": "WordPiece tokenizer file, trained on the corpus if absent; empty: the workdir's, "
    "else SHARD_DIR/tokenizer.json",
    "data.worker_count": "grain processes that mask and batch (0: in the training process)",
    "seq_len": "tokens per packed sequence (<= the model's max_len)",
    "microbatch": "sequences per training step (the batch the device sees)",
    "final_batch": "sequences per optimizer update at the end of the ramp (gradient accumulation)",
    "ramp_fraction": "fraction of the budget at which the batch reaches final_batch",
    "steps": "budget in microbatch steps (used when budget_hours is 0)",
    "budget_hours": "budget in wall-clock hours (> 0: the learning rate and batch ramp follow the clock)",
    "optimizer.lr": "peak AdamW learning rate (the budget triangle scales it: 0.25x at start, 1x at 75%)",
    "optimizer.b1": "AdamW beta1",
    "optimizer.b2": "AdamW beta2",
    "optimizer.eps": "AdamW epsilon",
    "optimizer.weight_decay": "AdamW weight decay (not on norms, biases and the position scale)",
    "optimizer.clip_norm": "gradients clipped to this global norm",
    "checkpoint_every": "save a checkpoint every this many steps (and at the end)",
    "keep_checkpoints": "checkpoints kept in the workdir (older ones are deleted)",
    "log_every": "one log line and metrics.jsonl record every this many steps",
    "eval_every": "held-out evaluation every this many steps and at the end (0: never)",
    "eval_batches": "microbatches held out from the end of the shards for evaluation (at most half the rows)",
    "seed": "seed of the initial weights, the data order and the masking",
    "num_devices": "devices of the data-parallel mesh (0: all)",
    "progress_bar": "show a progress bar (False: log lines only, e.g. when the output is a file)",
    "distributed.initialize": "call jax.distributed.initialize (multi-host runs)",
    "distributed.coordinator_address": "multi-host coordinator host:port (empty: JAX detects the cluster)",
    "distributed.num_processes": "multi-host process count (0: JAX detects it)",
    "distributed.process_id": "this process's index (-1: JAX detects it)",
}
