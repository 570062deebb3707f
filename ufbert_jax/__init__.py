"""ufbert_jax: UltraFastBERT (fast feedforward BERT) in JAX and Flax NNX.

    model, tokenizer = ufbert_jax.from_pretrained("runs/demo")  # a workdir, original-format folder or hub id

The names below load on first use, so processes that only need a submodule (tokenizer and data-loader
workers) do not pay for importing JAX and Flax.
"""

import importlib

_EXPORTS = {
    "fff": "ufbert_jax.fff",
    "from_pretrained": "ufbert_jax.pretrained",
    "ModelConfig": "ufbert_jax.config",
    "preset": "ufbert_jax.config",
    "MaskedLM": "ufbert_jax.model",
    "SequenceClassifier": "ufbert_jax.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ufbert_jax' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if module.__name__.endswith(f".{name}") else getattr(module, name)
