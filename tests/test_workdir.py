"""The workdir format: config round trip, params-only steps, restoring into MLM and classifier models."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from tests.helpers import randomise
from ufbert_jax import config, model, state_dict
from ufbert_jax import workdir as workdir_lib


def test_params_round_trip_into_mlm_and_classifier(tmp_path, rng):
    cfg = config.preset("tiny-fff", fff_trees=3, fff_depth=2)
    source = model.MaskedLM(cfg, nnx.Rngs(0))
    randomise(source, rng)
    workdir_lib.save_config(tmp_path, cfg)
    workdir_lib.save_params(tmp_path, 5, source)
    workdir_lib.save_params(tmp_path, 9, source)

    loaded = workdir_lib.load_pretrained(tmp_path)
    assert loaded.cfg == cfg
    expected = state_dict.to_state_dict(source)
    got = state_dict.to_state_dict(loaded)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)

    classifier = model.SequenceClassifier(cfg, 3, nnx.Rngs(1))
    head_before = np.asarray(classifier.head.kernel[...])
    assert workdir_lib.restore_params(tmp_path, classifier, step=5) == 5
    np.testing.assert_array_equal(
        classifier.encoder.embedding.word.embedding[...], source.encoder.embedding.word.embedding[...]
    )
    np.testing.assert_array_equal(classifier.head.kernel[...], head_before)


def test_config_overrides_and_errors(tmp_path):
    cfg = config.preset("tiny-dense")
    workdir_lib.save_config(tmp_path, cfg)
    assert workdir_lib.load_config(tmp_path) == cfg
    with pytest.raises(FileNotFoundError, match="no checkpoint steps under"):
        workdir_lib.load_pretrained(tmp_path, dropout=0.0)
    with pytest.raises(FileNotFoundError, match="is not a ufbert-jax workdir"):
        workdir_lib.load_config(tmp_path / "elsewhere")
    (tmp_path / workdir_lib.MODEL_CONFIG_FILE).write_text(json.dumps({"format": "other/9", "model": {}}))
    with pytest.raises(ValueError, match="format 'other/9', expected 'ufbert-jax/1'"):
        workdir_lib.load_config(tmp_path)


@pytest.mark.parametrize(
    "text", ["", '{"format": "ufbert-jax/1", "mod', "[1, 2]", '{"format": "ufbert-jax/1"}']
)
def test_a_damaged_model_json_is_an_error_naming_it(tmp_path, text):
    workdir_lib.save_config(tmp_path, config.preset("tiny-fff"))
    (tmp_path / workdir_lib.MODEL_CONFIG_FILE).write_text(text)
    with pytest.raises(ValueError, match=rf"{tmp_path / workdir_lib.MODEL_CONFIG_FILE}"):
        workdir_lib.load_config(tmp_path)


def test_a_damaged_step_is_an_error_naming_its_folder(tmp_path):
    cfg = config.preset("tiny-fff")
    workdir_lib.save_params(tmp_path, 3, model.MaskedLM(cfg, nnx.Rngs(0)))
    params = tmp_path / workdir_lib.CHECKPOINT_DIR / "3" / "params"
    data = max((p for p in params.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{params} does not restore: .*"):
        workdir_lib.restore_params(tmp_path, model.MaskedLM(cfg, nnx.Rngs(1)))


def test_model_json_is_replaced_atomically_with_the_umask_mode(tmp_path):
    workdir_lib.save_config(tmp_path, config.preset("tiny-fff"))
    path = tmp_path / workdir_lib.MODEL_CONFIG_FILE
    inode = path.stat().st_ino
    workdir_lib.save_config(tmp_path, config.preset("tiny-dense"))
    assert path.stat().st_ino != inode and workdir_lib.load_config(tmp_path) == config.preset("tiny-dense")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [workdir_lib.MODEL_CONFIG_FILE]


def another_tokenizer_of_the_same_size(path):
    """Rewrites the tokenizer.json at `path` with the ids of two ordinary tokens swapped: the same
    vocabulary size, another tokenizer."""
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = [token for token in vocab if token.isalpha()][:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(data))


def loaders(tmp_path):
    """Every reader of a workdir's tokenizer: eval_glue, the analysis CLI, the exporter, the library."""
    from ufbert_jax import original_format
    from ufbert_jax.analysis import routing_report
    from ufbert_jax.glue import Pretrained

    (tmp_path / "text.txt").write_text("the cat sat on the mat. " * 20)
    analysis = routing_report.default_config()
    analysis.progress_bar = False
    return {
        "eval_glue": Pretrained.load,
        "analysis": lambda w: routing_report.analyze_workdir(
            w, tmp_path / "text.txt", tmp_path / "a", 0, analysis
        ),
        "export": lambda w: original_format.from_workdir(w, tmp_path / "exported"),
        "library": lambda w: workdir_lib.load_tokenizer(w),
    }


@pytest.mark.parametrize("made_by", ["converter", "trainer"])
def test_a_workdir_refuses_a_tokenizer_other_than_the_models(tmp_path, rng, made_by):
    from tests.test_original_format import original_state_dict, small_arch, write_original
    from ufbert_jax import original_format
    from ufbert_jax.train import checkpointing

    arch = small_arch("fff-3x2")
    original = write_original(tmp_path / "original", arch, original_state_dict(arch, rng))
    workdir = tmp_path / "workdir"
    if made_by == "converter":
        original_format.to_workdir(original, workdir)
    else:  # the trainer's start: model.json and the tokenizer it trains with, then its steps
        mlm, _ = original_format.from_pretrained(original)
        checkpointing.prepare_workdir(workdir, mlm.cfg, original / "tokenizer.json")
        workdir_lib.save_params(workdir, 3, mlm)
    path = workdir_lib.tokenizer_path(workdir)
    another_tokenizer_of_the_same_size(path)
    for name, load in loaders(tmp_path).items():
        with pytest.raises(ValueError, match=rf"{path} .*is not the tokenizer the model was trained with"):
            load(workdir)
            pytest.fail(f"{name} accepted another tokenizer")


def test_changed_bytes_of_a_saved_step_are_an_error_naming_the_file(tmp_path, rng):
    """A params file whose bytes changed but not its size used to restore silently."""
    from tests.test_train import change_bytes_keeping_the_size

    cfg = config.preset("tiny-fff")
    source = model.MaskedLM(cfg, nnx.Rngs(0))
    randomise(source, rng)
    workdir_lib.save_config(tmp_path, cfg)
    workdir_lib.save_params(tmp_path, 3, source)
    params = tmp_path / workdir_lib.CHECKPOINT_DIR / "3" / "params"
    data = max((p for p in params.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    change_bytes_keeping_the_size(data)
    with pytest.raises(ValueError, match=rf"{data}: its content is not what was saved"):
        workdir_lib.load_pretrained(tmp_path)
