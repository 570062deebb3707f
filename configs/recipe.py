"""The pretraining recipe shared by every config: cramming's "bert-o4" as used for UltraFastBERT.

Not a config to run by itself: configs/ultrafastbert_1x11.py, crammedbert_3072.py and tiny.py build on
`base_config()`. Fields (all overridable as --config.FIELD=VALUE):
  model, model_overrides   a preset name (ufbert_jax.config.preset) and ModelConfig field overrides
  data.sources             a tuple of corpus specs (ufbert_jax/data/corpus.py: paths, hf:NAME, tfds:NAME);
                           on the command line one spec (--config.data.sources=hf:NAME), the flag
                           repeated, or a tuple literal '("/path/a","/path/b")'
  data.shard_dir, data.tokenizer   where the packed token shards and the tokenizer go (reused if present);
                           empty: derived from the corpus (ufbert_jax/train/inputs.py, data_paths)
  data.worker_count        grain masking worker processes (0: in the training process)
  seq_len                  tokens per packed sequence (<= the model's max_len)
  microbatch, final_batch, ramp_fraction   sequences per step; the effective batch grows by gradient
                           accumulation from one microbatch to final_batch at ramp_fraction of the budget
  steps, budget_hours      the budget: wall-clock hours if budget_hours > 0, else microbatch steps
  optimizer.*              AdamW and clipping (ufbert_jax.train.optim.OptimizerConfig)
  checkpoint_every, keep_checkpoints, log_every, eval_every (0: never), eval_batches   in steps
  seed, num_devices (0: all), progress_bar
  distributed.*            multi-host: initialize=True calls jax.distributed.initialize; the address,
                           process count and id may stay empty/0/-1 where JAX detects the cluster
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
