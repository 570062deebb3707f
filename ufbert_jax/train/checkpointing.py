"""Saving and resuming a pretraining run in its workdir (the format: ufbert_jax/workdir.py).

A trainer step holds "params", "train" (the optimizer state) and "meta": where the run is (step, first
step, elapsed seconds, every process's data-iterator state) and what it is (`run_identity`: seed,
microbatch, sequence length, corpus, process count, model).

Resume (`restore`) takes the newest step that restores. A damaged step (a missing or truncated file, a
file whose content differs from the step's checksums, an empty or partial step folder, unreadable meta) is
skipped with a warning naming it and the reason, and moved to workdir/damaged_checkpoints/ so that the run
saves its step number again; the run fails only when no step restores. A step with only "params" (a
converted checkpoint) starts a fresh optimizer and budget from those weights, but only in a workdir that
never had training state; elsewhere it is a damaged step.

Before anything is written (`check_resume`), a resumed workdir must hold the same model and the same run.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from ufbert_jax import checksums, io
from ufbert_jax import workdir as workdir_lib
from ufbert_jax.config import ModelConfig
from ufbert_jax.model import MaskedLM

log = logging.getLogger("ufbert_jax.train")

# Model fields that choose how the model runs, not what it is (weights are the same whatever their value):
# a resumed or converted workdir may differ in them.
RUNTIME_FIELDS = ("fff_impl", "attention_impl", "dtype", "dropout")
TRAINER_ITEMS = frozenset({"params", "train", "meta"})
DAMAGED_DIR = "damaged_checkpoints"


class NoRestorableStepError(RuntimeError):
    """Every checkpoint step of a workdir failed to restore."""


def run_identity(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> dict:
    """What a resumed run must share with the saved one: the values that give the saved data position and
    weights their meaning. The budget, optimizer, schedule, logging and device count may change."""
    model = dataclasses.asdict(model_cfg)
    return {
        "seed": config.seed,
        "microbatch": config.microbatch,
        "seq_len": config.seq_len,
        "sources": [str(source) for source in config.data.sources],
        "processes": jax.process_count(),
        "model": {name: value for name, value in model.items() if name not in RUNTIME_FIELDS},
    }


def meta(
    config: ml_collections.ConfigDict,
    model_cfg: ModelConfig,
    step: int,
    first_step: int,
    elapsed: float,
    data_state: list,
) -> dict:
    """The "meta" item of a step: where the run is, its seed (kept at the top level) and its identity."""
    return {
        "step": step,
        "first_step": first_step,
        "elapsed_s": elapsed,
        "seed": config.seed,
        "data_state": data_state,
        "run": run_identity(config, model_cfg),
    }


def save(
    mngr: ocp.CheckpointManager, step: int, model: MaskedLM, optimizer: nnx.Optimizer, meta: dict
) -> None:
    """Writes the "params", "train" (optimizer state) and "meta" items of a workdir step."""
    mngr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(workdir_lib.params_of(model)),
            train=ocp.args.StandardSave({"optimizer": nnx.to_pure_dict(nnx.state(optimizer))}),
            meta=ocp.args.JsonSave(meta),
        ),
    )


def _restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    restored = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    if not isinstance(restored["meta"], dict) or "step" not in restored["meta"]:
        raise ValueError(f"meta is {restored['meta']!r}, expected the trainer's JSON object with a 'step'")
    return restored["meta"]


def _restore_trainer_step(
    mngr: ocp.CheckpointManager, step: int, items: frozenset[str], model: MaskedLM, optimizer: nnx.Optimizer
) -> dict:
    """Restores a trainer step (params, optimizer state, meta) into model and optimizer; returns its meta.

    Raises, naming the item, where the step is incomplete or an item does not read, and naming the file
    where a file's content is not what was saved (ufbert_jax.checksums); nothing is changed then.
    """
    step_dir = Path(mngr.directory) / str(step)
    if missing := sorted(TRAINER_ITEMS - items):
        raise FileNotFoundError(f"{step_dir} has no {', '.join(missing)} (items found: {sorted(items)})")
    try:
        saved = _restore_meta(mngr, step)
    except Exception as error:
        raise ValueError(f"{step_dir / 'meta'} does not read: {workdir_lib.error_reason(error)}") from error
    checksums.verify(step_dir, sorted(TRAINER_ITEMS))  # a ChecksumError names a file changed since the save
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
    optimizer_state = nnx.state(optimizer)
    try:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract(workdir_lib.params_of(model))),
                train=ocp.args.StandardRestore(abstract({"optimizer": nnx.to_pure_dict(optimizer_state)})),
            ),
        )
    except Exception as error:
        raise ValueError(
            f"{step_dir} (params, train) does not read: {workdir_lib.error_reason(error)}"
        ) from error
    nnx.update(model, restored["params"])
    nnx.replace_by_pure_dict(optimizer_state, restored["train"]["optimizer"])
    nnx.update(optimizer, optimizer_state)
    return saved


def _set_aside(workdir: Path, step: int) -> Path:
    """Moves a damaged step to workdir/damaged_checkpoints/: kept for inspection, out of orbax's way."""
    target = workdir / DAMAGED_DIR / str(step)
    suffix = 1
    while target.exists():
        target, suffix = workdir / DAMAGED_DIR / f"{step}.{suffix}", suffix + 1
    target.parent.mkdir(exist_ok=True)
    shutil.move(workdir / workdir_lib.CHECKPOINT_DIR / str(step), target)
    return target


def _restore_converted(workdir: Path, step: int, model: MaskedLM) -> dict:
    """Restores the weights of a params-only step; the meta of a fresh budget counted from `step`."""
    workdir_lib.restore_params(workdir, model, step)
    log.info(
        "%s holds converted weights (params only, no optimizer state anywhere): continuing from step %d "
        "with a fresh optimizer and budget",
        workdir,
        step,
    )
    return {"step": step, "first_step": step, "elapsed_s": 0.0, "data_state": None}


def restore(workdir: Path, model: MaskedLM, optimizer: nnx.Optimizer) -> dict:
    """Restores the newest restorable step into `model` and `optimizer` in place and returns its meta.

    Without steps: the meta of a fresh run (step 0, no data state). Each newer step that does not restore is
    logged with its reason and set aside (by process 0). A workdir that never had training state (only
    "params" steps: converted weights) restores the weights alone, with a fresh budget from that step.
    NoRestorableStepError, listing every step's reason, when no step restores.
    """
    fresh = {"step": 0, "first_step": 0, "elapsed_s": 0.0, "data_state": None}
    if not (workdir / workdir_lib.CHECKPOINT_DIR).is_dir():
        return fresh
    skipped = []
    with workdir_lib.manager(workdir, create=False) as mngr:
        steps = sorted(mngr.all_steps(), reverse=True)
        items = {step: workdir_lib.checkpoint_items(workdir, step) for step in steps}
        trained = any(items[step] & {"train", "meta"} for step in steps)
        for step in steps:
            try:
                if trained:
                    saved = _restore_trainer_step(mngr, step, items[step], model, optimizer)
                else:
                    saved = _restore_converted(workdir, step, model)
                break
            except Exception as error:
                log.warning("checkpoint step %d skipped: %s", step, error)
                skipped.append((step, str(error)))
        else:
            if not steps:
                return fresh
            reasons = "\n".join(f"  step {step}: {reason}" for step, reason in skipped)
            raise NoRestorableStepError(
                f"no checkpoint step under {workdir / workdir_lib.CHECKPOINT_DIR} restores:\n{reasons}\n"
                "Move them away to start afresh in this workdir, or train in a new one."
            )
    if skipped:
        if jax.process_index() == 0:
            for step, _ in skipped:
                log.warning("damaged checkpoint step %d moved to %s", step, _set_aside(workdir, step))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("ufbert_jax: damaged checkpoint steps set aside")
        log.warning("resuming from checkpoint step %d, the newest that restores", saved["step"])
    return saved


def _newest_meta(workdir: Path) -> dict | None:
    """The meta of the newest step whose meta reads (None without one); reads only."""
    if not (workdir / workdir_lib.CHECKPOINT_DIR).is_dir():
        return None
    with workdir_lib.manager(workdir, create=False) as mngr:
        for step in sorted(mngr.all_steps(), reverse=True):
            if "meta" in workdir_lib.checkpoint_items(workdir, step):
                try:
                    checksums.verify(workdir_lib.step_dir(workdir, step), ["meta"])
                    return _restore_meta(mngr, step)
                except Exception:  # a damaged step: restore() reports it and falls back
                    continue
    return None


def _model_differences(saved: dict, model_cfg: ModelConfig) -> dict:
    wanted = dataclasses.asdict(model_cfg)
    return {
        name: (value, wanted.get(name))
        for name, value in saved.items()
        if name not in RUNTIME_FIELDS and value != wanted.get(name)
    }


def check_resume(workdir: Path, config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> None:
    """A ValueError listing every (workdir, config) difference where `workdir` holds another model or run.

    Compares model.json (when present; with the fingerprint of the tokenizer the run would train with) and
    the run identity saved in the newest readable meta: the seed and, for steps saved with one,
    `run_identity`. Reads only, so a refused start leaves the workdir as it was.
    """
    workdir_lib.check_not_a_file(workdir)
    problems = []
    saved = _newest_meta(workdir)
    if (workdir / workdir_lib.MODEL_CONFIG_FILE).is_file():
        saved_model = dataclasses.asdict(workdir_lib.load_config(workdir))
    else:
        saved_model = ((saved or {}).get("run") or {}).get("model", {})
    if differ := _model_differences(saved_model, model_cfg):
        problems.append(f"a different model; (workdir, config) values: {differ}")
    if (workdir / workdir_lib.MODEL_CONFIG_FILE).is_file():
        tokenizer = workdir_lib.tokenizer_path(workdir)  # what inputs.make_batches will train with
        tokenizer = tokenizer if tokenizer.is_file() else Path(config.data.tokenizer)
        try:
            workdir_lib.check_tokenizer(workdir, tokenizer)
        except (ValueError, FileNotFoundError) as error:
            problems.append(f"a model trained with another tokenizer ({error})")
    if saved is not None:
        wanted = run_identity(config, model_cfg)
        recorded = saved.get("run") or {"seed": saved.get("seed")}
        differ = {
            name: (value, wanted[name])
            for name, value in recorded.items()
            if name != "model" and name in wanted and value != wanted[name]
        }
        if differ:
            problems.append(
                f"a different run (saved at step {saved['step']}); (workdir, config) values: {differ}"
            )
    if problems:
        raise ValueError(
            f"{workdir} holds {' and '.join(problems)}. Resume with the saved values, or train in a new "
            "workdir."
        )


def prepare_workdir(workdir: Path, model_cfg: ModelConfig, tokenizer: Path) -> None:
    """Writes tokenizer.json (when it is another file) and model.json (when absent, or without the
    tokenizer's fingerprint), each atomically; call it after `check_resume` has accepted the workdir.

    The FFF implementation is saved as "auto": it is chosen where the model runs, not part of the model.
    model.json records the fingerprint of the tokenizer the run trains with (workdir.check_tokenizer).
    """
    workdir = Path(workdir)
    if workdir_lib.tokenizer_path(workdir).resolve() != Path(tokenizer).resolve():
        io.write_bytes(workdir_lib.tokenizer_path(workdir), Path(tokenizer).read_bytes())
    if not (workdir / workdir_lib.MODEL_CONFIG_FILE).is_file():
        fingerprint = workdir_lib.tokenizer_fingerprint(workdir_lib.tokenizer_path(workdir))
        workdir_lib.save_config(workdir, model_cfg.replace(fff_impl="auto"), fingerprint)
    elif workdir_lib.recorded_tokenizer(workdir) is None:
        workdir_lib.record_tokenizer(workdir)
