"""The workdir format: config round trip, params-only steps, restoring into MLM and classifier models."""

import json

import numpy as np
import pytest
from flax import nnx

from tests.helpers import randomise
from ufbert_jax import checkpoint, config, model, state_dict


def test_params_round_trip_into_mlm_and_classifier(tmp_path, rng):
    cfg = config.preset("tiny-fff", fff_trees=3, fff_depth=2)
    source = model.MaskedLM(cfg, nnx.Rngs(0))
    randomise(source, rng)
    checkpoint.save_config(tmp_path, cfg)
    checkpoint.save_params(tmp_path, 5, source)
    checkpoint.save_params(tmp_path, 9, source)

    loaded = checkpoint.load_pretrained(tmp_path)
    assert loaded.cfg == cfg
    expected = state_dict.to_state_dict(source)
    got = state_dict.to_state_dict(loaded)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)

    classifier = model.SequenceClassifier(cfg, 3, nnx.Rngs(1))
    head_before = np.asarray(classifier.head.kernel[...])
    assert checkpoint.restore_params(tmp_path, classifier, step=5) == 5
    np.testing.assert_array_equal(
        classifier.encoder.embedding.word.embedding[...], source.encoder.embedding.word.embedding[...]
    )
    np.testing.assert_array_equal(classifier.head.kernel[...], head_before)


def test_config_overrides_and_errors(tmp_path):
    cfg = config.preset("tiny-dense")
    checkpoint.save_config(tmp_path, cfg)
    assert checkpoint.load_config(tmp_path) == cfg
    with pytest.raises(FileNotFoundError, match="no checkpoint steps under"):
        checkpoint.load_pretrained(tmp_path, dropout=0.0)
    with pytest.raises(FileNotFoundError, match="is not a ufbert-jax workdir"):
        checkpoint.load_config(tmp_path / "elsewhere")
    (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps({"format": "other/9", "model": {}}))
    with pytest.raises(ValueError, match="format 'other/9', expected 'ufbert-jax/1'"):
        checkpoint.load_config(tmp_path)
