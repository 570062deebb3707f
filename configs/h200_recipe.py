"""The H200 reproduction's pretraining recipe (docs/RESULTS.md): cramming's recipe scaled to minutes.

Not a config to run by itself: configs/h200_crammedbert_3072.py and h200_ultrafastbert_1x11.py build on
`base_config()` and set only the model, so both models train under the same budget, data and schedule.
What differs from configs/recipe.py, and why:
  budget_hours  4 minutes instead of 24 hours: one device command runs at most 10 minutes and holds
                install, pretraining, the final checkpoint and GLUE (reproduce/reproduce_h200.sh); the
                first step's compilation (~20 s) counts against it. The learning-rate triangle and the
                batch ramp are time-based, so they scale with it.
  final_batch   512 instead of 8192 (ramp 128 -> 512 sequences at 60% of the budget). At ~24 (dense) and
                ~15 (1x11, masked form) microbatch steps/s, 4 minutes are ~5,300 and ~3,200 microbatches
                of 128 sequences; ramping to 8192 (64 microbatches per update) would leave the 1x11
                model about 160 optimizer updates; 512 keeps ~2,200 / ~1,300 updates of 65k tokens.
  data          the .device/ folder of reproduce/prepare_h200_data.py: a 32768-token WordPiece vocabulary
                on Wikipedia (2015, 6.5k articles) + 150 Gutenberg books, 38% of the packed corpus
                kept (12.7M tokens; the device command carries at most 64 MiB). The sources are this
                project's shared data beside the repository (../shared/data; machine-specific: pass
                your corpus with --config.data.sources) and must stay the strings the shards were
                packed from: train.py checks them against the manifest.
  worker_count  4 grain processes assemble the masked batches (one process makes ~3k rows/s: the dense
                model needs ~3k).
  eval_every    500 steps on 25 held-out microbatches (3,200 rows never trained on): ~11 (dense) and ~7
                (1x11) held-out losses in metrics.jsonl; evaluation time counts against the budget.
  checkpoint    one, at the end (the GLUE part of the same command reads it).
Kept: microbatch 128 (the paper's starting batch; the throughput measured in docs/pretraining.md),
seq_len 128, AdamW 1e-3 with the budget triangle, sparse MLM prediction, no dropout, bf16 compute.
"""

import ml_collections

from configs import recipe

SHARDS = ".device/shards-wiki-gutenberg-32768"


def base_config() -> ml_collections.ConfigDict:
    config = recipe.base_config()
    config.data.sources = [
        "../shared/data/corpus/wikipedia_en_2015_wikiextractor/text",
        "../shared/data/corpus/gutenberg_top100_authors_subset/books",
    ]
    config.data.shard_dir = SHARDS
    config.data.tokenizer = f"{SHARDS}/tokenizer.json"
    config.data.worker_count = 4
    config.budget_hours = 4 / 60
    config.final_batch = 512
    config.checkpoint_every = 10**9
    config.keep_checkpoints = 1
    config.log_every = 50
    config.eval_every = 500
    config.eval_batches = 25
    config.progress_bar = False  # the log is a file: one line per log_every steps instead of a bar
    return config
