"""crammedBERT-3072 (the dense baseline of Belcak & Wattenhofer 2023, table 1): the crammed BERT with a
3072-wide GELU feedforward, pretrained with the same cramming recipe as configs/ultrafastbert_1x11.py
(AdamW 1e-3, budget triangle, batch ramp 128 -> 8192 at 60% of 24 h, sparse MLM prediction, bf16).

    python train.py --config=configs/crammedbert_3072.py --workdir=runs/crammedbert-3072 \
        --config.data.sources=hf:EleutherAI/pile  # shards + tokenizer: runs/shards/pile-32768-HASH

Expected: ~24 h on one H200 at ~480k tokens/s (docs/pretraining.md: about 1.8x UltraFastBERT-1x11's
training throughput, since the masked FFF computes 4095 neurons per token against 3072), final MLM loss
~1.9, GLUE ~83.6 average without CoLA (docs/glue.md, published dev scores).
"""

import ml_collections

from configs import recipe


def get_config() -> ml_collections.ConfigDict:
    config = recipe.base_config()
    config.model = "crammedbert-3072"
    config.model_overrides = dict(dtype="bfloat16")
    return config
