"""ufbert_jax: UltraFastBERT (fast feedforward BERT) in JAX and Flax NNX."""

from ufbert_jax import fff
from ufbert_jax.config import ModelConfig, preset
from ufbert_jax.model import MaskedLM, SequenceClassifier

__all__ = ["MaskedLM", "ModelConfig", "SequenceClassifier", "fff", "preset"]
