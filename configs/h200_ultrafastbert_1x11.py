"""UltraFastBERT-1x11 on the H200 for 4 minutes: the paper's model in the reproduction (docs/RESULTS.md).

The model of configs/ultrafastbert_1x11.py (16 layers, hidden 768, one FFF tree of depth 11 per layer)
under the minute-scale recipe of configs/h200_recipe.py, the same budget, data and schedule as
configs/h200_crammedbert_3072.py. The FFF runs as "auto": the fastest training form JAX has on the device.
One device command pretrains it, fine-tunes it on GLUE and copies the results back:

    bash reproduce/reproduce_h200.sh ultrafastbert-1x11  # on the H200, after reproduce.prepare_h200_data here

which runs, among others,

    python train.py --config=configs/h200_ultrafastbert_1x11.py --workdir=runs/h200-ultrafastbert-1x11

Expected on one H200: 4 minutes of training, ~20 s of it compiling; in the masked training form at ~240k
tokens/s (docs/pretraining.md) ~3,200 microbatch steps = ~53M tokens (more with a sparse training form);
about 8.5 minutes for the whole command.
"""

import ml_collections

from configs import h200_recipe


def get_config() -> ml_collections.ConfigDict:
    config = h200_recipe.base_config()
    config.model = "ultrafastbert-1x11"
    config.model_overrides = dict(dtype="bfloat16", vocab_size=32768, fff_impl="auto")
    return config
