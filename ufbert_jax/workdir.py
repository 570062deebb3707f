"""The workdir format shared by train.py, eval_glue.py and the checkpoint converter.

    workdir/
      model.json        {"format": FORMAT, "model": ModelConfig fields, "tokenizer_sha256": hex digest}
      tokenizer.json    the Hugging Face `tokenizers` file (special-token ids are read from it)
      checkpoints/<step>/   orbax steps with checksums.json and the items
                          "params": nnx.state(MaskedLM, nnx.Param) as a pure dict (always present)
                          "train":  optimizer state and anything else the trainer needs to resume (optional:
                                    absent in converted checkpoints, which then start a fresh optimizer)
                          "meta":   JSON (step, data position, rng seed, ...), optional

Orbax writes each step to a temporary directory and renames it when complete, so a crash (even SIGKILL)
never leaves a half-written step that restore would pick. Each step holds checksums.json, the size and
SHA-256 of every item file (ufbert_jax.checksums), written before that rename and verified at restore.

model.json records the SHA-256 of the tokenizer.json the model was trained with (written by the trainer
and the converter); `load_tokenizer` refuses a tokenizer.json whose content differs from it, even with the
same vocabulary size. A model.json without the record (written by an earlier version) checks nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx
from tokenizers import Tokenizer

from ufbert_jax import checkpoint_manager, checksums, io
from ufbert_jax.config import ModelConfig
from ufbert_jax.data import tokenizer as data_tokenizer
from ufbert_jax.data.tokenizer import TOKENIZER_FILE
from ufbert_jax.model import MaskedLM

FORMAT = "ufbert-jax/1"
MODEL_CONFIG_FILE = "model.json"
CHECKPOINT_DIR = "checkpoints"
TMP_DIR_SUFFIX = checkpoint_manager.TMP_DIR_SUFFIX
TOKENIZER_SHA256 = "tokenizer_sha256"  # the model.json key of the tokenizer's fingerprint


def check_not_a_file(workdir: str | Path) -> None:
    """A NotADirectoryError when `workdir` names an existing regular file (or anything but a folder)."""
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a workdir (a folder)")


def save_config(workdir: str | Path, cfg: ModelConfig, tokenizer_sha256: str | None = None) -> None:
    """Writes workdir/model.json (atomically: a crash leaves the old file or the new one), with the
    fingerprint of the model's tokenizer (`tokenizer_fingerprint`) when given."""
    record = {"format": FORMAT, "model": dataclasses.asdict(cfg)}
    if tokenizer_sha256 is not None:
        record[TOKENIZER_SHA256] = tokenizer_sha256
    io.write_text(Path(workdir) / MODEL_CONFIG_FILE, json.dumps(record, indent=2) + "\n")


def tokenizer_fingerprint(path: str | Path) -> str:
    """The SHA-256 of a tokenizer file's content (hex): what model.json records as "tokenizer_sha256"."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recorded_tokenizer(workdir: str | Path) -> str | None:
    """The tokenizer fingerprint recorded in workdir/model.json (None where it records none)."""
    data = io.read_json(Path(workdir) / MODEL_CONFIG_FILE)
    return data.get(TOKENIZER_SHA256) if isinstance(data, dict) else None


def record_tokenizer(workdir: str | Path) -> None:
    """Records the fingerprint of workdir/tokenizer.json in model.json (which must exist)."""
    save_config(workdir, load_config(workdir), tokenizer_fingerprint(tokenizer_path(workdir)))


def check_tokenizer(workdir: str | Path, path: str | Path | None = None) -> None:
    """A ValueError naming the file when `path` (default: workdir/tokenizer.json) is not the tokenizer
    recorded in workdir/model.json; nothing to check where model.json records none."""
    path = tokenizer_path(workdir) if path is None else Path(path)
    recorded = recorded_tokenizer(workdir)
    if recorded is None:
        return
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer file {path} not found (the model was trained with sha256 {recorded})"
        )
    actual = tokenizer_fingerprint(path)
    if actual != recorded:
        raise ValueError(
            f"{path} (sha256 {actual[:16]}...) is not the tokenizer the model was trained with (sha256 "
            f"{recorded[:16]}..., recorded in {Path(workdir) / MODEL_CONFIG_FILE}): put that tokenizer back"
        )


def load_tokenizer(workdir: str | Path) -> Tokenizer:
    """workdir/tokenizer.json, checked against the fingerprint in model.json (`check_tokenizer`)."""
    check_not_a_file(workdir)
    check_tokenizer(workdir)
    return data_tokenizer.load_tokenizer(tokenizer_path(workdir))


def load_config(workdir: str | Path) -> ModelConfig:
    """The ModelConfig of workdir/model.json; errors name the file and what is wrong with it."""
    check_not_a_file(workdir)
    path = Path(workdir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a ufbert-jax workdir")
    data = io.read_json(path)  # a damaged file: FileFormatError (a ValueError) naming it
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else data
        raise ValueError(f"{path}: format {found!r}, expected {FORMAT!r}")
    try:
        return ModelConfig(**data["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: 'model' is not a valid ModelConfig ({error})") from error


def tokenizer_path(workdir: str | Path) -> Path:
    return Path(workdir) / TOKENIZER_FILE


def manager(workdir: str | Path, **options) -> ocp.CheckpointManager:
    """The CheckpointManager of a workdir (each step saved with its checksums, a write that finds no room
    raised once as io.NoSpaceError: ufbert_jax.checkpoint_manager); `options` go to
    ocp.CheckpointManagerOptions."""
    directory = (Path(workdir) / CHECKPOINT_DIR).absolute()
    return checkpoint_manager.Manager(directory, ocp.CheckpointManagerOptions(**options))


def step_dir(workdir: str | Path, step: int) -> Path:
    return Path(workdir) / CHECKPOINT_DIR / str(step)


def checkpoint_items(workdir: str | Path, step: int) -> frozenset[str]:
    """The item names saved at `step`, e.g. {"params"} for a converted checkpoint, or
    {"params", "train", "meta"} for one the trainer wrote."""
    step_dir = Path(workdir) / CHECKPOINT_DIR / str(step)
    if not step_dir.is_dir():
        raise FileNotFoundError(f"no checkpoint step {step} under {step_dir.parent}")
    return frozenset(path.name for path in step_dir.iterdir() if path.is_dir())


def latest_step(workdir: str | Path) -> int | None:
    """The newest complete checkpoint step of a workdir (None without one); reads the folder names only."""
    steps = Path(workdir) / CHECKPOINT_DIR
    found = [int(path.name) for path in steps.iterdir() if path.name.isdigit()] if steps.is_dir() else []
    return max(found, default=None)


def params_of(model: nnx.Module) -> dict:
    """The model's parameters as a pure nested dict (what the "params" item stores)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def save_params(workdir: str | Path, step: int, model: MaskedLM) -> None:
    """Writes a params-only checkpoint step (used by the converter; the trainer saves more items)."""
    with manager(workdir) as mngr:
        mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params_of(model))))
        mngr.wait_until_finished()


def check_step(workdir: str | Path, step: int | None = None) -> int:
    """The checkpoint step `step` (default: the latest) after checking that it exists and that its params
    files are what was saved (ufbert_jax.checksums); a FileNotFoundError or a ChecksumError names them."""
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint steps under {Path(workdir) / CHECKPOINT_DIR}")
    where = step_dir(workdir, step)
    if not where.is_dir():
        raise FileNotFoundError(f"no checkpoint step {step} under {where.parent}")
    try:
        checksums.verify(where, ["params"])
    except checksums.ChecksumError as error:
        raise checksums.ChecksumError(f"{where / 'params'} does not restore: {error}") from None
    return step


def restore_params(workdir: str | Path, model: nnx.Module, step: int | None = None) -> int:
    """Restores the encoder weights of `step` (default: the latest) into `model` in place; returns the step.

    `model` is a MaskedLM (whose parameters are exactly its encoder's: the decoder is tied) or a
    SequenceClassifier, which keeps its freshly initialised pooler and head. The step's params files are
    verified against its checksums first (ufbert_jax.checksums): a changed file is a ChecksumError naming it.
    """
    step = check_step(workdir, step)
    with manager(workdir) as mngr:
        where = Path(mngr.directory) / str(step) / "params"
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"encoder": params_of(model.encoder)})
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
        except Exception as error:
            raise ValueError(f"{where} does not restore: {error_reason(error)}") from error
    nnx.update(model.encoder, restored["params"]["encoder"])
    return step


def error_reason(error: BaseException) -> str:
    """The innermost cause of a failed restore on one line (TensorStore names the file and array there)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


def load_pretrained(workdir: str | Path, step: int | None = None, **config_overrides) -> MaskedLM:
    """The MaskedLM of a workdir in eval mode (config from model.json, weights from the latest or given step).

    ufbert_jax.from_pretrained returns it with its tokenizer (and loads original-format checkpoints too).
    """
    cfg = load_config(workdir).replace(**config_overrides)
    model = MaskedLM(cfg, nnx.Rngs(0))
    restore_params(workdir, model, step)
    model.eval()  # dropout off: the same input gives the same output
    return model
