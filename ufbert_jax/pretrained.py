"""One loader for every saved model: `from_pretrained(path, step=None)` -> (MaskedLM in eval mode, tokenizer).

`path` is any of
  - a ufbert-jax workdir (model.json, tokenizer.json, checkpoints/): what train.py writes (runs/demo after
    `make demo`) and what `convert.py --source` writes; `step` picks a checkpoint (default: the latest);
  - an original-format folder (config.json, model.safetensors or pytorch_model.bin, tokenizer.json): a
    download of pbelcak/UltraFastBERT-1x11-long, or what `convert.py --export` writes;
  - a Hugging Face hub id (owner/name) of such a checkpoint, downloaded with huggingface_hub.

The model is in eval mode (dropout off), so the same input always gives the same output. The formats'
own readers are ufbert_jax.workdir and ufbert_jax.original_format; this module only tells them apart.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from ufbert_jax import original_format
from ufbert_jax import workdir as workdir_lib
from ufbert_jax.data.tokenizer import SpecialIds, check_vocabulary, load_tokenizer
from ufbert_jax.model import MaskedLM

WORKDIR, ORIGINAL, HUB = "workdir", "original-format folder", "hub id"
_EXPECTED = (
    "a ufbert-jax workdir (with model.json: from train.py or convert.py --source), an original-format "
    "folder (with config.json: a downloaded checkpoint or convert.py --export) or a Hugging Face hub id "
    "(owner/name)"
)


def kind_of(path: str | Path) -> str:
    """WORKDIR, ORIGINAL or HUB: what `path` holds; FileNotFoundError naming the alternatives otherwise."""
    directory = Path(path)
    if directory.is_dir():
        if (directory / workdir_lib.MODEL_CONFIG_FILE).is_file():
            return WORKDIR
        if (directory / original_format.ORIGINAL_CONFIG_FILE).is_file():
            return ORIGINAL
        raise FileNotFoundError(
            f"{directory} holds neither {workdir_lib.MODEL_CONFIG_FILE} nor "
            f"{original_format.ORIGINAL_CONFIG_FILE}; expected {_EXPECTED}"
        )
    if not directory.exists() and original_format.is_hub_id(str(path)):
        return HUB
    raise FileNotFoundError(f"{str(path)!r} is not a directory; expected {_EXPECTED}")


def from_pretrained(
    path: str | Path, step: int | None = None, **config_overrides
) -> tuple[MaskedLM, Tokenizer]:
    """(MaskedLM in eval mode, its tokenizer) of a workdir, an original-format folder or a hub id.

    `step`: a workdir's checkpoint step (default: the latest); an original-format checkpoint has one set
    of weights, so a step there is a ValueError. `config_overrides` replace ModelConfig fields that do not
    change the weights (fff_impl, dtype, attention_impl).
    """
    kind = kind_of(path)
    if kind != WORKDIR:
        if step is not None:
            raise ValueError(
                f"{step=} picks a checkpoint of a ufbert-jax workdir, but {path} is an {kind} (one set of "
                "weights): leave step out, or convert it first (convert.py --source)"
            )
        return original_format.from_pretrained(path, **config_overrides)
    model = workdir_lib.load_pretrained(path, step, **config_overrides)  # in eval mode
    where = workdir_lib.tokenizer_path(path)
    tokenizer = load_tokenizer(where)
    SpecialIds.of(tokenizer, where)
    check_vocabulary(tokenizer, model.cfg.vocab_size, str(where))
    return model, tokenizer
