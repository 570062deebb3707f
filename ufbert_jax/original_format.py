"""Import and export of the original PyTorch checkpoint format (pbelcak/UltraFastBERT-1x11-long).

The original directory (docs/published_model.md; written by the cramming code's `ScriptableLMForPreTraining`):

    config.json              {"arch": {...}, "model_type": "crammedBERT", "architectures": [...]}
    model.safetensors        float32 state dict, the tied decoder stored as a second copy
    (or pytorch_model.bin)   the same as a torch pickle: read only through torch's weights-only loader
    tokenizer.json           the `tokenizers` file; special-token ids are read from it
    tokenizer_config.json, special_tokens_map.json   (written on export for Hugging Face; not needed here)

`config_from_arch` maps the `arch` dict to a ModelConfig and refuses every setting that would change the
outputs and that our model does not implement; `ufbert_jax.state_dict` maps and checks the tensors.
`to_workdir` turns an original directory (or hub id) into a ufbert-jax workdir (ufbert_jax.workdir)
that train.py continues pretraining from and eval_glue.py fine-tunes from; `from_workdir` exports a
workdir back to the original format. The command line is the top-level convert.py.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx
from tokenizers import Tokenizer

from ufbert_jax import io
from ufbert_jax import state_dict as state_dict_lib
from ufbert_jax import workdir as workdir_lib
from ufbert_jax.config import ModelConfig
from ufbert_jax.data.tokenizer import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    SpecialIds,
    check_vocabulary,
    load_tokenizer,
)
from ufbert_jax.model import CLASSIFIER_WIDTH, INIT_STD, MaskedLM

ORIGINAL_CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
_HUB_FILES = [ORIGINAL_CONFIG_FILE, SAFETENSORS_FILE, TORCH_FILE, TOKENIZER_FILE]

MODEL_TYPE = "crammedBERT"
ARCHITECTURES = ["ScriptableLMForPreTraining"]
# cramming predicts exactly this fraction of the tokens (sparse prediction); kept for a faithful export.
MLM_FRACTION = 0.25

_MISSING = object()
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class ConversionError(ValueError):
    """An original-format directory or config that we cannot convert; the message lists every problem."""


# ---------------------------------------------------------------------------------------------- config


class _ArchReader:
    """Reads dotted keys of an `arch` dict and collects every problem, to report them all at once."""

    def __init__(self, arch: dict):
        self.arch = arch
        self.problems: list[str] = []

    def lookup(self, path: str):
        node = self.arch
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def required(self, path: str, kind: type, minimum: float | None = None):
        """The value at `path`: present, a `kind` (int excludes bool; float admits int), >= minimum."""
        value = self.lookup(path)
        if value is _MISSING:
            self.problems.append(f"{path} is missing")
            return None
        kinds = (int, float) if kind is float else (kind,)
        if not isinstance(value, kinds) or (kind is not bool and isinstance(value, bool)):
            self.problems.append(f"{path}={value!r}; expected {kind.__name__}")
            return None
        if minimum is not None and value < minimum:
            self.problems.append(f"{path}={value!r}; expected >= {minimum}")
            return None
        return value

    def optional(self, path: str, kind: type, default, minimum: float | None = None):
        """Like `required`, but a missing key gives `default` (the cramming default)."""
        if self.lookup(path) is _MISSING:
            return default
        return self.required(path, kind, minimum)

    def fixed(self, path: str, expected, *, optional: bool = False) -> None:
        """The value at `path` must equal `expected` (a missing key is fine when `optional`)."""
        value = self.lookup(path)
        if value is _MISSING:
            if not optional:
                self.problems.append(f"{path} is missing (expected {expected!r})")
        # True == 1 in Python: a bool setting must be a bool.
        elif value != expected or isinstance(value, bool) != isinstance(expected, bool):
            self.problems.append(f"{path}={value!r} is not supported; expected {expected!r}")


# Settings that change the outputs; the original config must state these (the published one does).
_REQUIRED_SETTINGS = {
    "norm_scheme": "pre",
    "nonlin": "GELU",
    "tie_weights": True,
    "decoder_bias": False,
    "embedding.pos_embedding": "scaled-sinusoidal",
    "attention.qkv_bias": False,
}
# Settings that change the outputs or the state dict's keys; when absent the cramming defaults apply.
_OPTIONAL_SETTINGS = {
    "norm": "LayerNorm",
    "use_bias": False,
    "final_norm": True,
    "skip_head_transform": True,
    "ffn_layer_frequency": 1,
    "embedding.normalization": True,
    "attention.type": "self-attention",
    "attention.causal_attention": False,
    "attention.rotary_embedding": False,
    "attention.skip_output_projection": False,
    "attention.sequence_op": "torch-softmax",
}
_FEEDFORWARDS = ("fff", "ff")


def _feedforward(reader: _ArchReader) -> dict:
    """ModelConfig fields of the feedforward: intermed_type "fff" (K = intermed_size, D = intermed_depth)
    or "ff" (dense, width intermed_size; the original's default when intermed_type is absent)."""
    kind = reader.optional("intermed_type", str, "ff")
    if kind is None:
        return {}
    if kind not in _FEEDFORWARDS:
        reader.problems.append(f"intermed_type={kind!r} is not supported; expected one of {_FEEDFORWARDS}")
        return {}
    width = reader.required("intermed_size", int, 1)
    if kind == "ff":
        return {"feedforward": "dense", "ff_width": width}
    depth = reader.required("intermed_depth", int, 0)
    return {"feedforward": "fff", "fff_trees": width, "fff_depth": depth}


def _dropout(reader: _ArchReader) -> float | None:
    """Our one dropout rate; the original's three rates must agree (they do in every published config)."""
    rate = reader.optional("hidden_dropout_prob", float, 0.1, 0)
    if rate is not None:
        for path in ("embedding.dropout_prob", "attention.dropout_prob"):
            reader.fixed(path, rate, optional=True)
    return rate


def config_from_arch(arch: dict) -> ModelConfig:
    """The ModelConfig of an original `arch` dict; ConversionError lists every unsupported or missing key."""
    if not isinstance(arch, dict):
        raise ConversionError(f"arch must be a dict; got {type(arch).__name__}")
    reader = _ArchReader(arch)
    fields = {
        "layers": reader.required("num_transformer_layers", int, 1),
        "hidden": reader.required("hidden_size", int, 1),
        "heads": reader.required("attention.num_attention_heads", int, 1),
        "vocab_size": reader.required("embedding.vocab_size", int, 1),
        "max_len": reader.required("embedding.max_seq_length", int, 1),
        "norm_eps": reader.required("norm_eps", float, 0),
        "dropout": _dropout(reader),
        "pad_id": reader.optional("embedding.pad_token_id", int, 0, 0),
        **_feedforward(reader),
    }
    if fields["hidden"] is not None:
        # cramming ties the decoder to the embedding, so embedding_dim must be hidden_size.
        reader.fixed("embedding.embedding_dim", fields["hidden"], optional=True)
    for path, expected in _REQUIRED_SETTINGS.items():
        reader.fixed(path, expected)
    for path, expected in _OPTIONAL_SETTINGS.items():
        reader.fixed(path, expected, optional=True)
    if reader.problems:
        raise ConversionError("unsupported original config (arch):\n  " + "\n  ".join(reader.problems))
    try:
        return ModelConfig(**fields)
    except ValueError as err:
        raise ConversionError(f"the original config (arch) gives an invalid model: {err}") from err


def arch_from_config(cfg: ModelConfig) -> dict:
    """The original `arch` dict of `cfg`: the published checkpoint's keys, cramming defaults resolved."""
    if cfg.feedforward == "fff":
        feedforward = {
            "intermed_type": "fff",
            "intermed_size": cfg.fff_trees,
            "intermed_depth": cfg.fff_depth,
        }
    else:
        feedforward = {"intermed_type": "ff", "intermed_size": cfg.ff_width}
    return {
        "architectures": ["ScriptableCrammedBERT"],
        "num_transformer_layers": cfg.layers,
        "hidden_size": cfg.hidden,
        **feedforward,
        "hidden_dropout_prob": cfg.dropout,
        "norm": "LayerNorm",
        "norm_eps": cfg.norm_eps,
        "norm_scheme": "pre",
        "nonlin": "GELU",
        "tie_weights": True,
        "decoder_bias": False,
        "sparse_prediction": MLM_FRACTION,
        "loss": "cross-entropy",
        "objective_layout": "MLM",
        "embedding": {
            "vocab_size": cfg.vocab_size,
            "pos_embedding": "scaled-sinusoidal",
            "dropout_prob": cfg.dropout,
            "pad_token_id": cfg.pad_id,
            "max_seq_length": cfg.max_len,
            "embedding_dim": cfg.hidden,
            "normalization": True,
            "stable_low_precision": False,
        },
        "attention": {
            "type": "self-attention",
            "causal_attention": False,
            "num_attention_heads": cfg.heads,
            "dropout_prob": cfg.dropout,
            "skip_output_projection": False,
            "qkv_bias": False,
            "rotary_embedding": False,
            "seq_op_in_fp32": False,
            "sequence_op": "torch-softmax",
        },
        "init": {"type": "normal", "std": INIT_STD},
        "ffn_layer_frequency": 1,
        "skip_head_transform": True,
        "use_bias": False,
        "final_norm": True,
        "num_labels": None,
        "classification_head": {
            "pooler": "zero_index",  # first-token pooling, as our SequenceClassifier
            "include_ff_layer": True,
            "head_dim": CLASSIFIER_WIDTH,
            "nonlin": "Tanh",
            "classifier_dropout": cfg.dropout,
        },
    }


def read_config(directory: str | Path) -> ModelConfig:
    """The ModelConfig of an original directory's config.json."""
    path = Path(directory) / ORIGINAL_CONFIG_FILE
    if not path.is_file():
        if (Path(directory) / workdir_lib.MODEL_CONFIG_FILE).is_file():
            alternative = "but a ufbert-jax workdir: load it with ufbert_jax.from_pretrained"
        else:
            alternative = "(ufbert_jax.from_pretrained also loads ufbert-jax workdirs, which hold model.json)"
        raise FileNotFoundError(
            f"{path} not found: {directory} is not an original-format checkpoint {alternative}"
        )
    data = io.read_json(path)
    if not isinstance(data, dict) or "arch" not in data:
        keys = sorted(data) if isinstance(data, dict) else f"a {type(data).__name__}, not an object"
        raise ConversionError(f"{path} has no 'arch' dict (keys: {keys}); expected a crammedBERT config")
    try:
        return config_from_arch(data["arch"])
    except ConversionError as err:
        raise ConversionError(f"{path}: {err}") from err


# ------------------------------------------------------------------------------------------ state dict


def _refusal_reason(err: Exception) -> str:
    """The line of torch's weights-only error naming the refused global, not its advice to load unsafely."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0])


def _read_torch_pickle(path: Path) -> dict[str, np.ndarray]:
    """pytorch_model.bin through torch's weights-only unpickler; anything but a dict of tensors is refused."""
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{path} is a PyTorch pickle and torch is not installed: install torch (the CPU build is enough) "
            f"or provide {SAFETENSORS_FILE}"
        ) from None
    try:
        # weights_only: the unpickler builds tensors and plain containers only, never arbitrary objects.
        objects = torch.load(path, map_location="cpu", weights_only=True)
    # UnpicklingError: a global other than tensors and containers; RuntimeError: not a torch file at all.
    except (pickle.UnpicklingError, RuntimeError) as err:
        raise ConversionError(
            f"{path}: refused, not a pickle of plain tensors: {_refusal_reason(err)}"
        ) from err
    if not isinstance(objects, dict):
        raise ConversionError(f"{path}: refused, expected a dict of tensors; got {type(objects).__name__}")
    not_tensors = [
        f"{key}: {type(value).__name__}" for key, value in objects.items() if not torch.is_tensor(value)
    ]
    if not_tensors:
        raise ConversionError(f"{path}: refused, entries that are not tensors: {', '.join(not_tensors)}")
    # float() widens float16/bfloat16 exactly (numpy has no bfloat16) and leaves float32 untouched.
    return {key: value.detach().float().numpy() for key, value in objects.items()}


def _widened(value: np.ndarray) -> np.ndarray:
    """float16 and bfloat16 (an ml_dtypes type, not a numpy floating type) as float32, exactly."""
    if jnp.issubdtype(value.dtype, jnp.floating) and value.dtype.itemsize < 4:
        return value.astype(np.float32)
    return value


def read_state_dict(directory: str | Path) -> dict[str, np.ndarray]:
    """The original state dict of `directory`: model.safetensors, else pytorch_model.bin (needs torch).

    Half-precision tensors (float16, bfloat16) come back as float32, widened exactly.
    """
    directory = Path(directory)
    if (directory / SAFETENSORS_FILE).is_file():
        try:
            tensors = safetensors.numpy.load_file(directory / SAFETENSORS_FILE)
        # SafetensorError: a damaged header or payload; TypeError: a dtype numpy lacks.
        except (safetensors.SafetensorError, TypeError, ValueError, OSError) as err:
            raise ConversionError(
                f"{directory / SAFETENSORS_FILE}: not a readable safetensors file ({err}); truncated?"
            ) from None
        return {key: _widened(value) for key, value in tensors.items()}
    if (directory / TORCH_FILE).is_file():
        return _read_torch_pickle(directory / TORCH_FILE)
    raise FileNotFoundError(f"{directory} has neither {SAFETENSORS_FILE} nor {TORCH_FILE}")


def read_tokenizer(directory: str | Path, cfg: ModelConfig) -> Tokenizer:
    """tokenizer.json of `directory`; it must hold every special token and fit the model's vocabulary."""
    path = Path(directory) / TOKENIZER_FILE
    tokenizer = load_tokenizer(path)
    SpecialIds.of(tokenizer, path)
    check_vocabulary(tokenizer, cfg.vocab_size, str(path))
    return tokenizer


# ------------------------------------------------------------------------------------------ public API


def is_hub_id(text: str) -> bool:
    """Whether `text` has the form of a Hugging Face hub id, owner/name."""
    return _HUB_ID.fullmatch(text) is not None


def resolve(path_or_id: str | Path) -> Path:
    """A local directory as is; otherwise a Hugging Face hub id, downloaded with huggingface_hub."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists() or not is_hub_id(str(path_or_id)):
        raise FileNotFoundError(f"{path_or_id!r} is not a directory (nor a hub id of the form owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_id), allow_patterns=_HUB_FILES))
    # Network and hub failures come as many exception types (HTTP, DNS, offline mode, missing repo).
    except Exception as err:
        raise ConversionError(
            f"{path_or_id!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Offline? Download it where there is a network with "
            f"`hf download {path_or_id} --local-dir DIR` and pass DIR."
        ) from err


def from_pretrained(path_or_id: str | Path, **config_overrides) -> tuple[MaskedLM, Tokenizer]:
    """(MaskedLM in eval mode, tokenizer) of an original-format directory or hub id.

    ufbert_jax.from_pretrained loads these and ufbert-jax workdirs.

    config_overrides replace ModelConfig fields that do not change the weights (fff_impl, dtype, dropout).
    """
    directory = resolve(path_or_id)
    cfg = read_config(directory).replace(**config_overrides)
    model = MaskedLM(cfg, nnx.Rngs(0))
    weights = read_state_dict(directory)
    try:
        state_dict_lib.load_state_dict(model, weights)
    except state_dict_lib.StateDictError as err:
        raise state_dict_lib.StateDictError(f"{directory}: {err}") from err
    model.eval()
    return model, read_tokenizer(directory, cfg)


def _special_tokens_map() -> dict[str, str]:
    """Hugging Face's names for our special tokens (<pad> <s> </s> <unk> <cls> <sep> <mask>)."""
    names = ("pad_token", "bos_token", "eos_token", "unk_token", "cls_token", "sep_token", "mask_token")
    return dict(zip(names, SPECIAL_TOKENS, strict=True))


def save_pretrained(model: MaskedLM, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Writes `model` and `tokenizer` in the original format (both tied copies, norm_factor buffers)."""
    if not isinstance(model, MaskedLM):
        raise TypeError(f"save_pretrained exports a MaskedLM; got {type(model).__name__}")
    SpecialIds.of(tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "arch": arch_from_config(model.cfg),
        "model_type": MODEL_TYPE,
        "architectures": ARCHITECTURES,
        "torch_dtype": "float32",
    }
    state = state_dict_lib.to_state_dict(model)
    problems = state_dict_lib.bad_values(state)
    if problems:
        raise state_dict_lib.StateDictError("refusing to export:\n  " + "\n  ".join(problems))
    io.write_text(out_dir / ORIGINAL_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    # "format": "pt" is the metadata transformers expects to load a safetensors file into PyTorch.
    io.write_bytes(out_dir / SAFETENSORS_FILE, safetensors.numpy.save(state, metadata={"format": "pt"}))
    io.write_text(out_dir / TOKENIZER_FILE, tokenizer.to_str(pretty=True))
    special = _special_tokens_map()
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model.cfg.max_len,
        **special,
    }
    io.write_text(out_dir / TOKENIZER_CONFIG_FILE, json.dumps(tokenizer_config, indent=2) + "\n")
    io.write_text(out_dir / SPECIAL_TOKENS_MAP_FILE, json.dumps(special, indent=2) + "\n")
    return out_dir


def _clear_an_unfinished_save(steps: Path) -> None:
    """Refuses a checkpoints/ folder that holds a step; removes one that holds only orbax's temporary
    folders, the remains of a save that never finished (a convert killed mid-save), so it is redone."""
    entries = sorted(steps.iterdir()) if steps.is_dir() else []
    if any(workdir_lib.TMP_DIR_SUFFIX not in entry.name for entry in entries):
        raise FileExistsError(f"{steps} already holds checkpoints; convert into an empty workdir")
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def to_workdir(path_or_id: str | Path, workdir: str | Path) -> MaskedLM:
    """Converts an original checkpoint into a fresh ufbert-jax workdir (model.json, tokenizer.json, step 0).

    train.py continues pretraining from it with a fresh optimizer; eval_glue.py fine-tunes from it. A
    workdir left by a conversion killed before its step was complete (the step still in orbax's temporary
    folder, which no reader takes for a step) is converted again; one with a complete step is refused.
    """
    workdir_lib.check_not_a_file(workdir)
    _clear_an_unfinished_save(Path(workdir) / workdir_lib.CHECKPOINT_DIR)
    model, tokenizer = from_pretrained(path_or_id)
    io.write_text(workdir_lib.tokenizer_path(workdir), tokenizer.to_str(pretty=True))
    fingerprint = workdir_lib.tokenizer_fingerprint(workdir_lib.tokenizer_path(workdir))
    workdir_lib.save_config(workdir, model.cfg, fingerprint)
    workdir_lib.save_params(workdir, 0, model)
    return model


def from_workdir(workdir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Exports a workdir's step (default: the latest) to the original format."""
    tokenizer = workdir_lib.load_tokenizer(workdir)
    model = workdir_lib.load_pretrained(workdir, step)
    return save_pretrained(model, tokenizer, out_dir)
