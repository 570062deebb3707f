"""The CPU demo: a small UltraFastBERT (2 layers, hidden 128, one FFF tree of depth 5) pretrained on
data/sample (four public-domain books) with a 4096-token WordPiece vocabulary trained on them.

    python train.py --config=configs/tiny.py --workdir=runs/tiny

Expected on 2 (shared) CPU cores: about 1m45s in all, of which ~10 s prepare the data (tokenizer and
shards in runs/shards/sample-4096-HASH, reused afterwards) and ~90 s train; the masked-token loss falls
from 8.07 (mean of steps 1-10; ln 4096 = 8.3) to 6.20 (steps 141-150); on the held-out last 128 rows of
the shards eval loss about 6.5, MLM accuracy about 9%.
Shrink or grow it from the command line, e.g. --config.steps=50; another corpus is
--config.data.sources=/path/to/text (new shards and a tokenizer trained on it, under runs/shards/).
"""

import ml_collections

from configs import recipe


def get_config() -> ml_collections.ConfigDict:
    config = recipe.base_config()
    config.model = "ultrafastbert-1x5"
    # auto: trains with the masked form (a depth-5 tree: its dense products beat the sparse form on CPU),
    # evaluates with the CPU custom call (built on first use; the conditional form where it cannot be).
    config.model_overrides = dict(vocab_size=4096, hidden=128, layers=2, heads=4, fff_impl="auto")
    config.data.sources = ("data/sample",)  # the shards and tokenizer go to runs/shards/sample-4096-HASH
    config.microbatch = 32
    config.final_batch = 64  # the recipe's ramp, scaled down: 1 -> 2 microbatches at 60% of the budget
    config.steps = 150
    config.budget_hours = 0.0
    config.optimizer.lr = 2e-3
    config.checkpoint_every = 50
    config.log_every = 10
    config.eval_every = 50
    config.eval_batches = 4
    return config
