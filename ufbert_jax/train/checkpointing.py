"""Saving and resuming a pretraining run in its workdir (the format: ufbert_jax/checkpoint.py).

A trainer step holds "params", "train" (the optimizer state) and "meta" (step, first step, elapsed seconds,
seed and every process's data-iterator state). Resume restores the latest step; a step with only "params"
(a converted checkpoint) starts a fresh optimizer and budget from those weights.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from ufbert_jax import checkpoint as ckpt
from ufbert_jax.config import ModelConfig
from ufbert_jax.model import MaskedLM

# Model fields that choose how the model runs, not what it is (weights are the same whatever their value):
# a resumed or converted workdir may differ in them.
RUNTIME_FIELDS = ("fff_impl", "dtype", "dropout")


def save(
    mngr: ocp.CheckpointManager, step: int, model: MaskedLM, optimizer: nnx.Optimizer, meta: dict
) -> None:
    """Writes the "params", "train" (optimizer state) and "meta" items of a workdir step."""
    mngr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(ckpt.params_of(model)),
            train=ocp.args.StandardSave({"optimizer": nnx.to_pure_dict(nnx.state(optimizer))}),
            meta=ocp.args.JsonSave(meta),
        ),
    )


def meta(
    config: ml_collections.ConfigDict, step: int, first_step: int, elapsed: float, data_state: list
) -> dict:
    """The "meta" item of a step: where the run is (step, its first step, elapsed seconds, every process's
    data-iterator state) and its seed."""
    return {
        "step": step,
        "first_step": first_step,
        "elapsed_s": elapsed,
        "seed": config.seed,
        "data_state": data_state,
    }


def restore(mngr: ocp.CheckpointManager, workdir: Path, model: MaskedLM, optimizer: nnx.Optimizer) -> dict:
    """Restores the latest step into `model` and `optimizer` in place and returns its meta.

    A params-only step (a converted checkpoint) restores the weights only and starts a fresh budget there;
    without steps the meta of a fresh run (step 0, no data state) is returned.
    """
    step = mngr.latest_step()
    if step is None:
        return {"step": 0, "first_step": 0, "elapsed_s": 0.0, "data_state": None}
    if "train" not in ckpt.checkpoint_items(workdir, step):
        ckpt.restore_params(workdir, model, step)
        return {"step": step, "first_step": step, "elapsed_s": 0.0, "data_state": None}
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
    optimizer_state = nnx.state(optimizer)
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(ckpt.params_of(model))),
            train=ocp.args.StandardRestore(abstract({"optimizer": nnx.to_pure_dict(optimizer_state)})),
            meta=ocp.args.JsonRestore(),
        ),
    )
    nnx.update(model, restored["params"])
    nnx.replace_by_pure_dict(optimizer_state, restored["train"]["optimizer"])
    nnx.update(optimizer, optimizer_state)
    return restored["meta"]


def prepare_workdir(workdir: Path, model_cfg: ModelConfig, tokenizer: Path) -> None:
    """Writes model.json and tokenizer.json, or checks that an existing workdir holds the same model.

    The FFF implementation is saved as "auto": it is chosen where the model runs, not part of the model.
    """
    if (workdir / ckpt.CONFIG_FILE).is_file():
        existing = ckpt.load_config(workdir)
        runtime = {name: getattr(model_cfg, name) for name in RUNTIME_FIELDS}
        if existing.replace(**runtime) != model_cfg:
            differ = {
                f.name: (getattr(existing, f.name), getattr(model_cfg, f.name))
                for f in dataclasses.fields(model_cfg)
                if getattr(existing, f.name) != getattr(model_cfg, f.name) and f.name not in RUNTIME_FIELDS
            }
            raise ValueError(f"{workdir} holds a different model; (workdir, config) values: {differ}")
    else:
        ckpt.save_config(workdir, model_cfg.replace(fff_impl="auto"))
    if ckpt.tokenizer_path(workdir).resolve() != tokenizer.resolve():
        shutil.copyfile(tokenizer, ckpt.tokenizer_path(workdir))
