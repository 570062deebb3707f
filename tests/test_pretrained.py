"""ufbert_jax.from_pretrained: one loader for workdirs, original-format folders and hub ids, in eval mode."""

import re
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from flax import nnx

import ufbert_jax
from tests.helpers import randomise
from tests.test_original_format import original_state_dict, small_arch, write_original, write_tokenizer
from ufbert_jax import config, inference, model, original_format, pretrained
from ufbert_jax import workdir as workdir_lib

IDS = np.array([[7, 8, 9, 10, 11, 12, 2, 1]], np.int32)  # [B, S]; 2 is <mask>, 1 <sep> (SPECIAL_ORDER)


def workdir_of_a_trained_model(path, rng, step=3):
    """A workdir as train.py leaves it (model.json, tokenizer.json, a checkpoint), dropout 0.5 configured."""
    cfg = config.preset("tiny-fff", vocab_size=32, dropout=0.5, max_len=16)
    trained = model.MaskedLM(cfg, nnx.Rngs(0))
    randomise(trained, rng)
    workdir_lib.save_config(path, cfg)
    workdir_lib.save_params(path, step, trained)
    write_tokenizer(workdir_lib.tokenizer_path(path))
    return path


def assert_eval_mode(mlm):
    dropouts = [node for _, node in nnx.iter_graph(mlm) if isinstance(node, nnx.Dropout)]
    assert dropouts and all(d.deterministic for d in dropouts)
    assert any(d.rate > 0 for d in dropouts)  # dropout is configured, and off
    np.testing.assert_array_equal(np.asarray(mlm(IDS)), np.asarray(mlm(IDS)))


@pytest.fixture
def locations(tmp_path, rng):
    """{kind: path} of the three local kinds: a trained workdir, a converted workdir, an original folder."""
    arch = small_arch("fff-3x2")
    original = write_original(tmp_path / "original", arch, original_state_dict(arch, rng))
    converted = tmp_path / "converted"
    original_format.to_workdir(original, converted)
    return {"trained": workdir_of_a_trained_model(tmp_path / "trained", rng), "converted": converted,
            "original": original}  # fmt: skip


@pytest.mark.parametrize("kind", ["trained", "converted", "original"])
def test_every_kind_loads_in_eval_mode_with_its_tokenizer(locations, kind):
    mlm, tokenizer = ufbert_jax.from_pretrained(locations[kind])
    assert isinstance(mlm, model.MaskedLM) and tokenizer.token_to_id("<mask>") == 2
    assert_eval_mode(mlm)
    predictions = inference.fill_mask(mlm, tokenizer, "the cat <mask>")
    assert predictions == inference.fill_mask(mlm, tokenizer, "the cat <mask>") and len(predictions[0]) == 5


def test_workdir_load_pretrained_is_in_eval_mode_too(tmp_path, rng):
    assert_eval_mode(workdir_lib.load_pretrained(workdir_of_a_trained_model(tmp_path, rng)))


def test_a_converted_workdir_equals_its_original(locations):
    original, _ = ufbert_jax.from_pretrained(locations["original"])
    converted, _ = ufbert_jax.from_pretrained(locations["converted"], step=0)
    np.testing.assert_array_equal(np.asarray(original(IDS)), np.asarray(converted(IDS)))


def test_inference_runs_with_dropout_off_whatever_the_models_mode(locations):
    mlm, tokenizer = ufbert_jax.from_pretrained(locations["trained"])
    expected = np.asarray(inference.encode(mlm, IDS))
    mlm.train()  # dropout 0.5 on: a direct call is random, inference is not, and the model keeps its mode
    assert not np.array_equal(np.asarray(mlm.encoder(IDS)), np.asarray(mlm.encoder(IDS)))
    np.testing.assert_array_equal(np.asarray(inference.encode(mlm, IDS)), expected)
    assert inference.fill_mask(mlm, tokenizer, "a <mask>") == inference.fill_mask(mlm, tokenizer, "a <mask>")
    assert not mlm.encoder.embedding.dropout.deterministic


def test_a_hub_id_is_downloaded_as_an_original_folder(locations, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **_: str(locations["original"]))
    assert pretrained.kind_of("owner/name") == pretrained.HUB
    mlm, _ = ufbert_jax.from_pretrained("owner/name")
    assert_eval_mode(mlm)


def test_errors_name_the_alternatives(locations, tmp_path):
    alternatives = r"expected a ufbert-jax workdir .*model\.json.*original-format folder.*hub id"
    with pytest.raises(FileNotFoundError, match=rf"neither model\.json nor config\.json; {alternatives}"):
        ufbert_jax.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"is not a directory; {alternatives}"):
        ufbert_jax.from_pretrained(tmp_path / "absent")
    with pytest.raises(ValueError, match=r"step=2 picks a checkpoint of a ufbert-jax workdir.*original-fo"):
        ufbert_jax.from_pretrained(locations["original"], step=2)
    with pytest.raises(FileNotFoundError, match=r"but a ufbert-jax workdir: load it with ufbert_jax\.from_"):
        original_format.from_pretrained(locations["trained"])


def test_the_readmes_use_your_trained_model_runs_as_written(tmp_path, rng, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Use your trained model") : readme.index("## Build a model")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    workdir = workdir_of_a_trained_model(tmp_path / "demo", rng)
    exec(code.replace('"runs/demo"', repr(str(workdir))), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(re.fullmatch(r" *\S+  \d\.\d{3}", line) for line in lines)
