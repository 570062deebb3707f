"""The original checkpoint format: exact logits against the float64 original, bit-exact round trips, the CLI
and workdir, fill-mask, and clear errors on bad input.

Every checkpoint here is synthetic but in the exact original format: config.json with a published-style
`arch` dict, model.safetensors with the original key names and shapes (written out below from
docs/published_model.md, independent of ufbert_jax.state_dict), random non-zero biases and norms, and a
tokenizer.json whose special tokens are in a non-default order.
"""

import copy
import importlib.util
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from tests import reference_numpy as ref
from tests.helpers import tokens_and_mask
from ufbert_jax import config, inference, model, original_format, state_dict
from ufbert_jax import workdir as workdir_lib
from ufbert_jax.data.tokenizer import SpecialIds

HAS_TORCH = importlib.util.find_spec("torch") is not None
NO_TORCH = "torch is not installed (the .bin path needs it; pip install torch to run this test)"
# Redraw weights when a float64 FFF routing logit is this close to 0: float32 rounding could flip that branch.
MARGIN = 1e-4
TOLERANCE = 1e-4

# The published 1x11-long arch (cramming's crammed-bert-fff.yaml with 1x11, values resolved).
PUBLISHED_ARCH = {
    "architectures": ["ScriptableCrammedBERT"],
    "num_transformer_layers": 16,
    "hidden_size": 768,
    "intermed_type": "fff",
    "intermed_size": 1,
    "intermed_depth": 11,
    "hidden_dropout_prob": 0.1,
    "norm": "LayerNorm",
    "norm_eps": 1e-12,
    "norm_scheme": "pre",
    "nonlin": "GELU",
    "tie_weights": True,
    "decoder_bias": False,
    "sparse_prediction": 0.25,
    "loss": "cross-entropy",
    "objective_layout": "MLM",
    "embedding": {
        "vocab_size": 32768,
        "pos_embedding": "scaled-sinusoidal",
        "dropout_prob": 0.1,
        "pad_token_id": 0,
        "max_seq_length": 128,
        "embedding_dim": 768,
        "normalization": True,
        "stable_low_precision": False,
    },
    "attention": {
        "type": "self-attention",
        "causal_attention": False,
        "num_attention_heads": 12,
        "dropout_prob": 0.1,
        "skip_output_projection": False,
        "qkv_bias": False,
        "rotary_embedding": False,
        "seq_op_in_fp32": False,
        "sequence_op": "torch-softmax",
    },
    "init": {"type": "normal", "std": 0.02},
    "ffn_layer_frequency": 1,
    "skip_head_transform": True,
    "use_bias": False,
    "final_norm": True,
    "num_labels": None,
    "classification_head": {
        "pooler": "avg",
        "include_ff_layer": True,
        "head_dim": 1024,
        "nonlin": "Tanh",
        "classifier_dropout": 0.1,
    },
}

# Small variants: head dim 16 so that norm_factor = 16^-0.5 = 0.25 is exact in every float format.
SMALL = dict(layers=2, hidden=32, heads=2, vocab=61, max_len=16)
FEEDFORWARDS = {
    "fff-1x3": {"intermed_type": "fff", "intermed_size": 1, "intermed_depth": 3},
    "fff-3x2": {"intermed_type": "fff", "intermed_size": 3, "intermed_depth": 2},
    "dense": {"intermed_type": "ff", "intermed_size": 48},
}

SPECIAL_ORDER = ["<unk>", "<sep>", "<mask>", "<pad>", "</s>", "<cls>", "<s>"]  # deliberately not the default
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "house", "##s", "big", "small"]


def small_arch(feedforward: str) -> dict:
    arch = copy.deepcopy(PUBLISHED_ARCH)
    arch.update(
        num_transformer_layers=SMALL["layers"], hidden_size=SMALL["hidden"], **FEEDFORWARDS[feedforward]
    )
    if feedforward == "dense":
        del arch["intermed_depth"]
    arch["embedding"].update(
        vocab_size=SMALL["vocab"], max_seq_length=SMALL["max_len"], embedding_dim=SMALL["hidden"]
    )
    arch["attention"]["num_attention_heads"] = SMALL["heads"]
    return arch


def original_state_dict(arch: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 weights under the original keys and shapes, in the original's order."""
    hidden, layers = arch["hidden_size"], arch["num_transformer_layers"]
    vocab, heads = arch["embedding"]["vocab_size"], arch["attention"]["num_attention_heads"]

    def weight(*shape):  # PyTorch [out, in]
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def norm(prefix):
        return {
            f"{prefix}.weight": (1 + 0.3 * rng.standard_normal(hidden)).astype(np.float32),
            f"{prefix}.bias": (0.3 * rng.standard_normal(hidden)).astype(np.float32),
        }

    word = (rng.standard_normal((vocab, hidden)) * 0.5).astype(np.float32)
    scale = np.asarray([(1 + 0.3 * rng.standard_normal()) / np.sqrt(hidden)], np.float32)
    sd = {
        "encoder.embedding.word_embedding.weight": word,
        "encoder.embedding.pos_embedding.scale_factor": scale,
        **norm("encoder.embedding.norm"),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}"
        sd.update(norm(f"{p}.norm1"))
        sd.update(norm(f"{p}.norm2"))
        sd[f"{p}.attn.self_attention.norm_factor"] = np.asarray((hidden // heads) ** -0.5, np.float32)
        sd[f"{p}.attn.self_attention.query_key_value.weight"] = weight(3 * hidden, hidden)
        sd[f"{p}.attn.dense.weight"] = weight(hidden, hidden)
        if arch["intermed_type"] == "fff":
            rows = arch["intermed_size"] * (2 ** (arch["intermed_depth"] + 1) - 1)
            sd[f"{p}.ffn.linear_in.weight"] = weight(rows, hidden)
            sd[f"{p}.ffn.linear_in.bias"] = (0.3 * rng.standard_normal(rows)).astype(np.float32)
            sd[f"{p}.ffn.linear_out.weight"] = weight(hidden, rows)
        else:
            sd[f"{p}.ffn.dense_in.weight"] = weight(arch["intermed_size"], hidden)
            sd[f"{p}.ffn.dense_out.weight"] = weight(hidden, arch["intermed_size"])
    sd.update(norm("encoder.final_norm"))
    sd["decoder.weight"] = word.copy()
    return sd


def write_tokenizer(path: Path) -> None:
    """A tiny lowercase WordPiece tokenizer with the original's single-sequence template "A <sep>"."""
    vocab = {token: i for i, token in enumerate(SPECIAL_ORDER + WORDS)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.add_special_tokens(SPECIAL_ORDER)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <sep>",
        pair="<cls> $A <sep> $B:1 <sep>:1",
        special_tokens=[(token, vocab[token]) for token in ("<cls>", "<sep>")],
    )
    tokenizer.save(str(path))


def write_original(directory: Path, arch: dict, sd: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config_json = {"arch": arch, "model_type": "crammedBERT", "architectures": ["ScriptableLMForPreTraining"]}
    (directory / "config.json").write_text(json.dumps(config_json))
    safetensors.numpy.save_file(sd, directory / "model.safetensors", metadata={"format": "pt"})
    write_tokenizer(directory / "tokenizer.json")
    return directory


def reference_arch(arch: dict) -> dict:
    trees = arch["intermed_size"] if arch["intermed_type"] == "fff" else None
    return dict(
        layers=arch["num_transformer_layers"],
        heads=arch["attention"]["num_attention_heads"],
        trees=trees,
        eps=arch["norm_eps"],
    )


def well_conditioned(arch, rng, ids, mask, attempts=10):
    """(state dict, float64 logits) of the first draw whose FFF routing no float32 rounding can flip."""
    for _ in range(attempts):
        sd = original_state_dict(arch, rng)
        margins = []
        logits = ref.mlm_logits(sd, ids, mask, margins=margins, **reference_arch(arch))
        if min(margins, default=np.inf) > MARGIN:
            return sd, logits
    raise AssertionError(f"no draw in {attempts} kept every routing logit farther than {MARGIN} from 0")


@pytest.fixture
def original(tmp_path, rng):
    """A synthetic original-format FFF directory (3 trees of depth 2) and its state dict."""
    arch = small_arch("fff-3x2")
    sd = original_state_dict(arch, rng)
    return write_original(tmp_path / "original", arch, sd), sd


def padded_tokens_and_mask(rng, cfg):
    """tokens_and_mask with padding by construction: its last row is cut to a length in [S/2, S)."""
    ids, mask = tokens_and_mask(rng, cfg)
    seq_len = ids.shape[1]
    mask[-1, rng.integers(seq_len // 2, seq_len) :] = 0
    return ids * mask, mask  # pad id 0 on padded positions


def logits_of(mlm, rng):
    ids, mask = padded_tokens_and_mask(rng, mlm.cfg)
    return np.asarray(mlm(ids, mask)), ids, mask


# ------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("feedforward", list(FEEDFORWARDS))
def test_mlm_logits_equal_the_float64_original(tmp_path, rng, feedforward):
    arch = small_arch(feedforward)
    cfg = original_format.config_from_arch(arch)
    ids, mask = padded_tokens_and_mask(rng, cfg)
    assert mask[0].all() and not mask[-1].all(), "a full row and a padded one"
    sd, expected = well_conditioned(arch, rng, ids, mask)
    mlm, _ = original_format.from_pretrained(write_original(tmp_path, arch, sd))
    got = np.asarray(mlm(ids, mask))
    err = np.abs(got - expected).max()
    print(
        f"{feedforward}: max |logit - float64 original| = {err:.3g}, max |logit| {np.abs(expected).max():.3g}"
    )
    assert got.shape == (*ids.shape, SMALL["vocab"])
    assert err <= TOLERANCE


def test_published_arch_gives_the_1x11_model_and_the_published_shapes():
    cfg = original_format.config_from_arch(PUBLISHED_ARCH)
    assert cfg == config.preset("ultrafastbert-1x11-long")
    mlm = nnx.eval_shape(lambda: model.MaskedLM(cfg, nnx.Rngs(0)))
    shapes = state_dict.expected_shapes(mlm)
    assert len(shapes) == 4 + 10 * 16 + 3
    assert shapes["encoder.embedding.word_embedding.weight"] == shapes["decoder.weight"] == (32768, 768)
    assert shapes["encoder.embedding.pos_embedding.scale_factor"] == (1,)
    assert shapes["encoder.layers.15.attn.self_attention.query_key_value.weight"] == (2304, 768)
    assert shapes["encoder.layers.15.attn.self_attention.norm_factor"] == ()
    assert shapes["encoder.layers.0.ffn.linear_in.weight"] == (4095, 768)
    assert shapes["encoder.layers.0.ffn.linear_in.bias"] == (4095,)
    assert shapes["encoder.layers.0.ffn.linear_out.weight"] == (768, 4095)
    dense = {**PUBLISHED_ARCH, "intermed_type": "ff", "intermed_size": 3072}
    del dense["intermed_depth"]
    assert original_format.config_from_arch(dense) == config.preset("crammedbert-3072")


@pytest.mark.parametrize(
    "cfg",
    [
        config.preset("ultrafastbert-4x9"),
        config.preset("crammedbert-4095", dropout=0.0, norm_eps=1e-5, pad_id=3),
        config.preset("tiny-fff"),
    ],
    ids=["4x9", "dense", "tiny"],
)
def test_arch_round_trip(cfg):
    arch = original_format.arch_from_config(cfg)
    assert json.loads(json.dumps(arch)) == arch
    assert original_format.config_from_arch(arch) == cfg


# --------------------------------------------------------------------------------------- round trips


def test_original_to_ours_to_original_is_bit_exact(original, tmp_path, rng):
    directory, sd = original
    mlm, tokenizer = original_format.from_pretrained(directory)
    exported = original_format.save_pretrained(mlm, tokenizer, tmp_path / "exported")
    again = safetensors.numpy.load_file(exported / "model.safetensors")
    assert sorted(again) == sorted(sd)
    for key, value in sd.items():
        assert again[key].dtype == value.dtype and again[key].shape == value.shape, key
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    config_json = json.loads((exported / "config.json").read_text())
    assert config_json["model_type"] == "crammedBERT"
    assert config_json["architectures"] == ["ScriptableLMForPreTraining"]
    assert original_format.config_from_arch(config_json["arch"]) == mlm.cfg
    assert Tokenizer.from_file(str(exported / "tokenizer.json")).to_str() == tokenizer.to_str()
    special = json.loads((exported / "special_tokens_map.json").read_text())
    assert special["mask_token"] == "<mask>" and special["pad_token"] == "<pad>"
    assert (
        json.loads((exported / "tokenizer_config.json").read_text())["model_max_length"] == SMALL["max_len"]
    )
    reloaded, _ = original_format.from_pretrained(exported)
    first, ids, mask = logits_of(mlm, rng)
    np.testing.assert_array_equal(np.asarray(reloaded(ids, mask)), first)


def test_special_ids_are_read_from_the_tokenizer_file(original):
    _, tokenizer = original_format.from_pretrained(original[0])
    ids = SpecialIds.of(tokenizer)
    assert (ids.unk, ids.sep, ids.mask, ids.pad, ids.eos, ids.cls, ids.bos) == tuple(range(7))
    assert tokenizer.encode("the cat").ids == [7, 8, 1]  # "A <sep>"


def test_decoder_copy_wins_when_the_tied_copies_differ_with_a_warning(tmp_path, rng):
    arch = small_arch("fff-1x3")
    sd = original_state_dict(arch, rng)
    sd["decoder.weight"] = sd["decoder.weight"].copy()
    sd["decoder.weight"][5, 3] += 0.25  # the largest difference
    sd["decoder.weight"][7] += 0.01
    with pytest.warns(
        state_dict.TiedCopiesWarning,
        match=r"differ: largest difference 0\.25 at \[5, 3\] \(33 of 1952 values differ\); decoder\.weight",
    ):
        mlm, tokenizer = original_format.from_pretrained(write_original(tmp_path / "original", arch, sd))
    np.testing.assert_array_equal(mlm.encoder.embedding.word.embedding[...], sd["decoder.weight"])
    again = safetensors.numpy.load_file(
        original_format.save_pretrained(mlm, tokenizer, tmp_path / "out") / "model.safetensors"
    )
    np.testing.assert_array_equal(again["encoder.embedding.word_embedding.weight"], sd["decoder.weight"])
    np.testing.assert_array_equal(again["decoder.weight"], sd["decoder.weight"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_checkpoint_converts(tmp_path, rng, dtype):
    """float16 and bfloat16 files convert: weights widened exactly, norm_factor E^-0.5 rounded to the
    file's dtype accepted (head dim 8: 0.35355 is 0.35352 in float16, 0.35352 in bfloat16 too)."""
    import ml_dtypes

    arch = small_arch("fff-3x2")
    arch["attention"]["num_attention_heads"] = 4  # head dim 8: E^-0.5 is not a short binary fraction
    half = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    sd = {key: value.astype(half) for key, value in original_state_dict(arch, rng).items()}
    mlm, _ = original_format.from_pretrained(write_original(tmp_path / "original", arch, sd))
    assert mlm.cfg.head_dim == 8
    np.testing.assert_array_equal(
        mlm.encoder.layers[1].ffn.b_in[...].reshape(-1),
        sd["encoder.layers.1.ffn.linear_in.bias"].astype(np.float32),
    )


def test_a_convert_killed_mid_save_never_blocks_the_rerun(original, tmp_path):
    """A kill during the save leaves the step in orbax's temporary folder: the rerun converts again."""
    directory, _ = original
    workdir = tmp_path / "workdir"
    original_format.to_workdir(directory, workdir)
    steps = workdir / workdir_lib.CHECKPOINT_DIR
    (steps / "0").rename(steps / "0.orbax-checkpoint-tmp")  # what a kill before the commit leaves
    data = max((p for p in steps.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(FileNotFoundError, match="no checkpoint steps under"):
        workdir_lib.load_pretrained(workdir)  # eval_glue finds no step ...
    original_format.to_workdir(directory, workdir)  # ... and the rerun is not refused
    assert (
        workdir_lib.restore_params(workdir, model.MaskedLM(workdir_lib.load_config(workdir), nnx.Rngs(0)))
        == 0
    )
    assert sorted(p.name for p in steps.iterdir()) == ["0"]
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        original_format.to_workdir(directory, workdir)  # a complete one is kept
    with pytest.raises(NotADirectoryError, match="is a file, not a workdir"):
        original_format.to_workdir(directory, tmp_path / "workdir" / "model.json")


def convert_script(*flags: str) -> subprocess.CompletedProcess:
    """The documented command line: python convert.py FLAGS, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "convert.py", *flags], cwd=Path(__file__).parents[1], capture_output=True, text=True
    )


def test_cli_writes_a_workdir_that_train_and_eval_glue_load(original, tmp_path, rng):
    directory, sd = original
    workdir = tmp_path / "workdir"
    done = convert_script(f"--source={directory}", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr
    assert f"{directory} -> {workdir}:" in done.stdout
    converted, tokenizer = original_format.from_pretrained(directory)
    loaded = workdir_lib.load_pretrained(workdir)
    loaded.eval()
    assert loaded.cfg == converted.cfg
    expected, ids, mask = logits_of(converted, rng)
    np.testing.assert_array_equal(np.asarray(loaded(ids, mask)), expected)
    assert Tokenizer.from_file(str(workdir_lib.tokenizer_path(workdir))).to_str() == tokenizer.to_str()
    # eval_glue.py's path: a classifier takes the encoder weights and keeps its fresh head.
    classifier = model.SequenceClassifier(workdir_lib.load_config(workdir), 3, nnx.Rngs(0))
    assert workdir_lib.restore_params(workdir, classifier) == 0
    np.testing.assert_array_equal(
        classifier.encoder.layers[1].ffn.w_in[...], converted.encoder.layers[1].ffn.w_in[...]
    )
    # ... and back to the original format, bit for bit.
    done = convert_script(f"--workdir={workdir}", f"--export={tmp_path / 'exported'}", "--step=0")
    assert done.returncode == 0, done.stderr
    again = safetensors.numpy.load_file(tmp_path / "exported" / "model.safetensors")
    assert sorted(again) == sorted(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        original_format.to_workdir(directory, workdir)


# ------------------------------------------------------------------------------------------ fill-mask


def test_fill_mask_returns_the_top_k_tokens(original):
    mlm, tokenizer = original_format.from_pretrained(original[0])
    # Zero the final norm's scale: every position then outputs its bias b, and the logits are E @ b.
    vocab = tokenizer.get_vocab_size()
    embedding = np.zeros((SMALL["vocab"], SMALL["hidden"]), np.float32)
    embedding[:, 0] = np.linspace(-1, 1, SMALL["vocab"])[np.random.default_rng(0).permutation(SMALL["vocab"])]
    mlm.encoder.embedding.word.embedding[...] = embedding
    mlm.encoder.final_norm.scale[...] = np.zeros(SMALL["hidden"], np.float32)
    mlm.encoder.final_norm.bias[...] = np.eye(SMALL["hidden"], dtype=np.float32)[0] * 5
    logits = 5 * embedding[:vocab, 0]
    order = np.argsort(-logits)[:5]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    expected = [(tokenizer.id_to_token(int(i)), probs[i]) for i in order]

    predictions = inference.fill_mask(mlm, tokenizer, "The cat <mask> on the <mask>.", top_k=5)
    assert len(predictions) == 2
    for prediction in predictions:
        assert [token for token, _ in prediction] == [token for token, _ in expected]
        np.testing.assert_allclose([p for _, p in prediction], [p for _, p in expected], rtol=1e-5)
    with pytest.raises(ValueError, match="has no mask token '<mask>'"):
        inference.fill_mask(mlm, tokenizer, "no mask here")
    with pytest.raises(ValueError, match=rf"top_k=0 must be in \[1, {vocab}\]"):
        inference.fill_mask(mlm, tokenizer, "a <mask>", top_k=0)


# ------------------------------------------------------------------------------------------ bad input


def test_bad_state_dict_lists_every_problem(tmp_path, rng):
    arch = small_arch("fff-1x3")
    sd = original_state_dict(arch, rng)
    del sd["encoder.layers.1.norm2.bias"], sd["encoder.final_norm.weight"]
    sd["encoder.layers.0.ffn.linear_out.bias"] = np.zeros(SMALL["hidden"], np.float32)
    sd["encoder.layers.0.ffn.linear_in.weight"] = sd["encoder.layers.0.ffn.linear_in.weight"].T.copy()
    sd["encoder.layers.1.attn.self_attention.norm_factor"] = np.asarray(0.125, np.float32)
    directory = write_original(tmp_path / "bad", arch, sd)
    with pytest.raises(state_dict.StateDictError) as info:
        original_format.from_pretrained(directory)
    message = str(info.value)
    for expected in (
        str(directory),
        "missing keys (2): encoder.final_norm.weight, encoder.layers.1.norm2.bias",
        "unexpected keys (1): encoder.layers.0.ffn.linear_out.bias",
        "encoder.layers.0.ffn.linear_in.weight: expected (15, 32), got (32, 15)",
        "encoder.layers.1.attn.self_attention.norm_factor=0.125",
    ):
        assert expected in message, message


def test_unknown_intermed_type():
    arch = {**PUBLISHED_ARCH, "intermed_type": "moe"}
    with pytest.raises(
        original_format.ConversionError, match=r"intermed_type='moe' is not supported; expected one of"
    ):
        original_format.config_from_arch(arch)


def test_unsupported_arch_values_are_listed_together(tmp_path):
    arch = copy.deepcopy(PUBLISHED_ARCH)
    del arch["hidden_size"]
    arch.update(norm_scheme="post", nonlin="GELUglu", tie_weights=False, decoder_bias=True, intermed_depth=-1)
    arch["embedding"].update(pos_embedding="learned", vocab_size=None)
    arch["attention"].update(qkv_bias=True, type="pytorch", dropout_prob=0.2)
    with pytest.raises(original_format.ConversionError) as info:
        original_format.config_from_arch(arch)
    message = str(info.value)
    for expected in (
        "hidden_size is missing",
        "intermed_depth=-1; expected >= 0",
        "embedding.vocab_size=None; expected int",
        "norm_scheme='post' is not supported; expected 'pre'",
        "nonlin='GELUglu' is not supported; expected 'GELU'",
        "tie_weights=False is not supported; expected True",
        "decoder_bias=True is not supported; expected False",
        "embedding.pos_embedding='learned' is not supported; expected 'scaled-sinusoidal'",
        "attention.qkv_bias=True is not supported; expected False",
        "attention.type='pytorch' is not supported; expected 'self-attention'",
        "attention.dropout_prob=0.2 is not supported; expected 0.1",
    ):
        assert expected in message, message
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    no_arch = r"has no 'arch' dict \(keys: \['model_type'\]\)"
    with pytest.raises(original_format.ConversionError, match=no_arch):
        original_format.read_config(tmp_path)


def test_missing_files_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        original_format.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"arch": small_arch("dense")}))
    with pytest.raises(FileNotFoundError, match=r"has neither model\.safetensors nor pytorch_model\.bin"):
        original_format.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        original_format.from_pretrained(tmp_path / "absent")

    def offline(repo_id, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(
        original_format.ConversionError, match=r"could not be fetched.*no network.*hf download owner/model"
    ):
        original_format.from_pretrained("owner/model")


def test_hub_id_downloads_the_checkpoint_files(original, monkeypatch):
    calls = []

    def download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(original[0])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    mlm, _ = original_format.from_pretrained("pbelcak/UltraFastBERT-1x11-long")
    assert mlm.cfg.fff_trees == 3
    assert calls[0][0] == "pbelcak/UltraFastBERT-1x11-long"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(calls[0][1])


class _Payload:
    """Unpickling this runs Path.touch(marker): the pickle the converter must never load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _write_malicious_bin(tmp_path: Path, original_dir: Path) -> Path:
    directory = tmp_path / "malicious"
    directory.mkdir()
    (directory / "config.json").write_bytes((original_dir / "config.json").read_bytes())
    # Protocol 2, torch's own: newer protocols make torch warn, which pytest turns into an error.
    payload = pickle.dumps({"x": _Payload(tmp_path / "pwned")}, protocol=2)
    (directory / "pytorch_model.bin").write_bytes(payload)
    return directory


@pytest.mark.skipif(
    HAS_TORCH, reason="torch is installed: test_torch_pickle_of_objects_is_refused covers this"
)
def test_torch_pickle_without_torch_is_never_unpickled(original, tmp_path):
    directory = _write_malicious_bin(tmp_path, original[0])
    no_torch = r"torch is not installed: install torch .* or provide"
    with pytest.raises(original_format.ConversionError, match=no_torch):
        original_format.from_pretrained(directory)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.skipif(not HAS_TORCH, reason=NO_TORCH)
def test_torch_pickle_of_objects_is_refused(original, tmp_path):
    import torch

    directory = _write_malicious_bin(tmp_path, original[0])
    with pytest.raises(
        original_format.ConversionError, match=r"refused, not a pickle of plain tensors.*Unsupported global"
    ):
        original_format.from_pretrained(directory)
    assert not (tmp_path / "pwned").exists()
    torch.save({"weight": torch.zeros(2), "note": "not a tensor"}, directory / "pytorch_model.bin")
    with pytest.raises(original_format.ConversionError, match="entries that are not tensors: note: str"):
        original_format.read_state_dict(directory)


@pytest.mark.skipif(not HAS_TORCH, reason=NO_TORCH)
def test_torch_pickle_of_tensors_loads_like_safetensors(original, tmp_path):
    import torch

    directory, sd = original
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (bin_dir / name).write_bytes((directory / name).read_bytes())
    torch.save({key: torch.from_numpy(value) for key, value in sd.items()}, bin_dir / "pytorch_model.bin")
    loaded = original_format.read_state_dict(bin_dir)
    assert sorted(loaded) == sorted(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


# ------------------------------------------------------------------------- damaged files, bad values


UNREADABLE = "not a readable safetensors file"


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("config.json", lambda data: data[: len(data) // 2], r"config\.json: invalid JSON .*truncated\?"),
        ("config.json", lambda data: b"", r"config\.json: empty file, expected JSON"),
        ("config.json", lambda data: b"\xff\xfe" + data, r"config\.json: not UTF-8 text"),
        ("model.safetensors", lambda data: data[:-100], rf"model\.safetensors: {UNREADABLE}"),
        ("model.safetensors", lambda data: data[:5], rf"model\.safetensors: {UNREADABLE}"),
        ("tokenizer.json", lambda data: b"", r"tokenizer\.json: not a `tokenizers` JSON file"),
        ("tokenizer.json", lambda data: data[:-10], r"tokenizer\.json: not a `tokenizers` JSON file"),
    ],
    ids=["config-truncated", "config-empty", "config-binary", "safetensors-truncated", "safetensors-header",
         "tokenizer-empty", "tokenizer-truncated"],
)  # fmt: skip
def test_damaged_files_are_named(original, name, damage, message):
    directory, _ = original
    path = directory / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=rf"{directory}/{message}"):
        original_format.from_pretrained(directory)


def test_non_finite_or_non_float_weights_are_refused(tmp_path, rng):
    arch = small_arch("fff-1x3")
    sd = original_state_dict(arch, rng)
    sd["encoder.layers.0.attn.dense.weight"][3, 4] = np.nan
    sd["encoder.final_norm.bias"][0] = np.inf
    sd["encoder.layers.1.norm1.weight"] = np.ones(SMALL["hidden"], np.int32)
    with pytest.raises(state_dict.StateDictError) as info:
        original_format.from_pretrained(write_original(tmp_path / "bad", arch, sd))
    for expected in (
        "encoder.layers.0.attn.dense.weight: 1 of 1024 values are NaN or infinite",
        "encoder.final_norm.bias: 1 of 32 values are NaN or infinite",
        "encoder.layers.1.norm1.weight: dtype int32, expected floating point",
    ):
        assert expected in str(info.value), str(info.value)


def test_export_refuses_non_finite_weights_and_writes_readable_files(original, tmp_path):
    mlm, tokenizer = original_format.from_pretrained(original[0])
    old = os.umask(0o022)
    try:
        exported = original_format.save_pretrained(mlm, tokenizer, tmp_path / "exported")
        workdir = tmp_path / "workdir"
        original_format.to_workdir(original[0], workdir)
    finally:
        os.umask(old)
    files = [*exported.iterdir(), workdir / "model.json", workdir / "tokenizer.json"]
    assert len(files) == 7 and {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o644"}, files
    mlm.encoder.layers[0].ffn.w_in[...] = mlm.encoder.layers[0].ffn.w_in[...].at[0, 0, 0].set(np.nan)
    with pytest.raises(state_dict.StateDictError, match=r"refusing to export:\n  encoder\.layers\.0\.ffn"):
        original_format.save_pretrained(mlm, tokenizer, tmp_path / "nan")
    assert not (tmp_path / "nan" / "model.safetensors").exists()
