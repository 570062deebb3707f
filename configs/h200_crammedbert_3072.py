"""crammedBERT-3072 on the H200 for 4 minutes: the dense baseline of the reproduction (docs/RESULTS.md).

The model of configs/crammedbert_3072.py (16 layers, hidden 768, a 3072-wide GELU feedforward) under the
minute-scale recipe of configs/h200_recipe.py, which configs/h200_ultrafastbert_1x11.py shares. One device
command pretrains it, fine-tunes it on GLUE and copies the results back:

    bash reproduce/reproduce_h200.sh crammedbert-3072    # on the H200, after reproduce.prepare_h200_data here

which runs, among others,

    python train.py --config=configs/h200_crammedbert_3072.py --workdir=runs/h200-crammedbert-3072

Expected on one H200: 4 minutes of training at ~395k tokens/s (docs/pretraining.md), ~20 s of it compiling:
~5,300 microbatch steps = ~87M tokens, the held-out MLM loss every 500 steps; about 8.5 minutes for the
whole command.
"""

import ml_collections

from configs import h200_recipe


def get_config() -> ml_collections.ConfigDict:
    config = h200_recipe.base_config()
    config.model = "crammedbert-3072"
    config.model_overrides = dict(dtype="bfloat16", vocab_size=32768)
    return config
