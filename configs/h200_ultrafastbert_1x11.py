"""UltraFastBERT-1x11 for 13 minutes on one GPU: the paper's model in the reproduction (docs/RESULTS.md).

The model of configs/ultrafastbert_1x11.py (16 layers, hidden 768, one FFF tree of depth 11 per layer)
under the minute-scale recipe of configs/h200_recipe.py, the same budget, data and schedule as
configs/h200_crammedbert_3072.py. The FFF runs as "auto": the fastest training form JAX has on the device
(the sparse Pallas training kernels on a GPU, docs/sparse_training.md). One device session pretrains it,
fine-tunes it on GLUE and brings the record back (docs/RESULTS.md, How to reproduce), after
`python -m reproduce.prepare_h200_data` here:

    source reproduce/gpu_env.sh && python3 -m reproduce.session start ultrafastbert-1x11 --commit SHA \
        --wait 480 --out $OUT

which runs, in the background,

    python3 train.py --config=configs/h200_ultrafastbert_1x11.py \
        --workdir=runs/session-ultrafastbert-1x11/workdir

Expected on one H100: 13 minutes of training at ~687k tokens/s (the real loop, docs/pretraining.md),
~20-40 s of it compiling: ~32,000 microbatch steps = ~530M tokens = ~16 epochs of the corpus, the held-out
MLM loss every 1400 steps (~23 points); about 20 minutes for the whole session with GLUE.
"""

import ml_collections

from configs import h200_recipe


def get_config() -> ml_collections.ConfigDict:
    config = h200_recipe.base_config()
    config.model = "ultrafastbert-1x11"
    config.model_overrides = dict(dtype="bfloat16", vocab_size=32768, fff_impl="auto")
    return config
