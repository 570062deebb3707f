"""crammedBERT-3072 for 13 minutes on one GPU: the dense baseline of the reproduction (docs/RESULTS.md).

The model of configs/crammedbert_3072.py (16 layers, hidden 768, a 3072-wide GELU feedforward) under the
minute-scale recipe of configs/h200_recipe.py, which configs/h200_ultrafastbert_1x11.py shares. One device
session pretrains it, fine-tunes it on GLUE and brings the record back (docs/RESULTS.md, How to
reproduce), after `python -m reproduce.prepare_h200_data` here:

    source reproduce/gpu_env.sh && python3 -m reproduce.session start crammedbert-3072 --commit SHA \
        --wait 480 --out $OUT

which runs, in the background,

    python3 train.py --config=configs/h200_crammedbert_3072.py \
        --workdir=runs/session-crammedbert-3072/workdir

Expected on one H100: 13 minutes of training at ~463k tokens/s (the real loop, docs/pretraining.md),
~20-40 s of it compiling: ~22,000 microbatch steps = ~360M tokens = ~11 epochs of the corpus, the held-out
MLM loss every 1400 steps (~16 points); about 20 minutes for the whole session with GLUE.
"""

import ml_collections

from configs import h200_recipe


def get_config() -> ml_collections.ConfigDict:
    config = h200_recipe.base_config()
    config.model = "crammedbert-3072"
    config.model_overrides = dict(dtype="bfloat16", vocab_size=32768)
    return config
