"""The reproduction's pretraining recipe (docs/RESULTS.md): cramming's recipe scaled to 13 minutes.

Not a config to run by itself: configs/h200_crammedbert_3072.py and h200_ultrafastbert_1x11.py build on
`base_config()` and set only the model, so both models train under the same budget, data and schedule.
(Named for the card they were first written for; the runs of docs/RESULTS.md use one H100, the device
kind `nvidia-h100-x1`, for both models.) What differs from configs/recipe.py, and why:
  budget_hours  13 minutes instead of 24 hours, so that each model gets at least 12 minutes of pretraining
                with the first step's compilation (~20-40 s) and the held-out evaluations counted in, as
                wall clock is in the paper. One device session holds 30 minutes of GPU time: one model's
                pretraining, its GLUE fine-tuning and the machine's start (reproduce/session.py). The
                learning-rate triangle and the batch ramp are time-based, so they scale with it.
  final_batch   512 instead of 8192 (ramp 128 -> 512 sequences at 60% of the budget, as in the 4-minute
                runs before, so both are comparable). At the loop's measured 463k (dense) and 687k (1x11)
                tokens/s on an H100 (docs/pretraining.md, the real loop against its bare step), 13 minutes
                are ~22,000 and ~32,000 microbatches of 128 sequences: ~9,000 and ~13,000 optimizer updates
                of up to 65k tokens; at ~360-530M tokens a run, 65k tokens per update is already a larger
                share of the run than the paper's 1M-token batches are of a day's training.
  data          the whole packed corpus of reproduce/prepare_h200_data.py (33.7M tokens: 2015 Wikipedia,
                6.5k articles, + 150 Gutenberg books, a 32768-token WordPiece vocabulary), unpacked on the
                GPU machine from the compressed copy that travels (.device, reproduce/travel.py) into
                runs/h200-data. 13 minutes at 463k / 687k tokens/s are ~11 / ~16 epochs. The sources are this
                project's shared data beside the repository (../shared/data; machine-specific: pass your
                corpus with --config.data.sources) and must stay the strings the shards were packed from:
                train.py checks them against the manifest.
  worker_count  4 grain processes assemble the masked batches (one process makes ~3k rows/s).
  eval_every    1400 steps on 25 held-out microbatches (3,200 rows never trained on), logged every 50:
                ~16 (dense) and ~23 (1x11) points of the held-out loss curve at the measured speeds; each
                evaluation (~1 s) counts against the budget.
  checkpoint    one, at the end (GLUE, in the same session, reads it).
Kept: microbatch 128 (the paper's starting batch; the throughput measured in docs/pretraining.md),
seq_len 128, AdamW 1e-3 with the budget triangle, sparse MLM prediction, no dropout, bf16 compute.
"""

import ml_collections

from configs import recipe

DATA = "runs/h200-data"  # the plain data: made by reproduce/prepare_h200_data.py, or unpacked from .device
SHARDS = f"{DATA}/shards-wiki-gutenberg-32768"
GLUE = f"{DATA}/glue"


def base_config() -> ml_collections.ConfigDict:
    config = recipe.base_config()
    config.data.sources = [
        "../shared/data/corpus/wikipedia_en_2015_wikiextractor/text",
        "../shared/data/corpus/gutenberg_top100_authors_subset/books",
    ]
    config.data.shard_dir = SHARDS
    config.data.tokenizer = f"{SHARDS}/tokenizer.json"
    config.data.worker_count = 4
    config.budget_hours = 13 / 60
    config.final_batch = 512
    config.checkpoint_every = 10**9
    config.keep_checkpoints = 1
    config.log_every = 50
    config.eval_every = 1400
    config.eval_batches = 25
    config.progress_bar = False  # the log is a file: one line per log_every steps instead of a bar
    return config
