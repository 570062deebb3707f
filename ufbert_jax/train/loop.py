"""The pretraining loop: data-parallel mesh, budget, checkpoints and resume, metrics; `train_and_evaluate`.

One code path from one device to many hosts: a 1-D mesh over every device (axis "data"), parameters and
optimizer state replicated, each microbatch sharded on "data". Each process reads its own slice of the data
(shard_index = process index) and contributes its rows to the global batch
(jax.make_array_from_process_local_data); jit inserts the gradient all-reduce.

Resume is automatic: the latest step of workdir/checkpoints is restored with its optimizer state, data
iterator position and elapsed time; a step with only "params" (a converted checkpoint) starts a fresh
optimizer and budget from those weights.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from ufbert_jax import checkpoint as ckpt
from ufbert_jax.config import ModelConfig, preset
from ufbert_jax.data.tokenizer import SpecialIds, check_vocabulary, load_tokenizer
from ufbert_jax.model import MaskedLM
from ufbert_jax.train import metrics as metrics_lib
from ufbert_jax.train.optim import (
    OptimizerConfig,
    accumulation_steps,
    budget_schedule,
    make_optimizer,
    step_progress,
    time_progress,
)
from ufbert_jax.train.steps import evaluate, train_step

# Model fields that choose how the model runs, not what it is (weights are the same whatever their value):
# a resumed or converted workdir may differ in them.
RUNTIME_FIELDS = ("fff_impl", "dtype", "dropout")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; nothing after the last good checkpoint was saved."""


def initialize_distributed(config) -> None:
    """jax.distributed.initialize() when config.distributed.initialize is set (multi-host runs).

    Empty coordinator_address / num_processes 0 / process_id -1 leave the value to JAX's cluster
    auto-detection (SLURM, Open MPI, TPU pods, Kubernetes); set all three on a plain cluster.
    """
    dist = config.distributed
    if not dist.initialize:
        return
    options = {
        "coordinator_address": dist.coordinator_address or None,
        "num_processes": dist.num_processes or None,
        "process_id": dist.process_id if dist.process_id >= 0 else None,
    }
    jax.distributed.initialize(**{k: v for k, v in options.items() if v is not None})


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh over the first `num_devices` devices (0: all, across every process)."""
    devices = jax.devices()
    if num_devices:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices}; expected 0 (all) or 1..{len(devices)}")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def replicate(mesh: jax.sharding.Mesh, *nodes: nnx.Module | nnx.Optimizer) -> None:
    """Places every array of the given NNX objects on all devices of the mesh, in place."""
    replicated = NamedSharding(mesh, P())
    for node in nodes:
        nnx.update(node, jax.device_put(nnx.state(node), replicated))


def global_batch(mesh: jax.sharding.Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows [B / processes, ...] -> global arrays [B, ...] sharded on the "data" axis."""
    sharding = NamedSharding(mesh, P("data"))
    return {name: jax.make_array_from_process_local_data(sharding, array) for name, array in local.items()}


def model_config(config) -> ModelConfig:
    """The ModelConfig of a train config (preset + overrides), checked against its sequence length."""
    cfg = preset(config.model, **dict(config.model_overrides))
    if not 1 <= config.seq_len <= cfg.max_len:
        raise ValueError(f"seq_len={config.seq_len} must be in 1..{cfg.max_len} (the model's max_len)")
    return cfg


@dataclasses.dataclass(frozen=True)
class Budget:
    """The training budget: `steps` microbatch steps, or `seconds` of wall clock when seconds > 0."""

    steps: int
    seconds: float

    @classmethod
    def of(cls, config) -> Budget:
        budget = cls(int(config.steps), 3600.0 * float(config.budget_hours))
        if budget.seconds <= 0 and budget.steps < 1:
            raise ValueError(
                f"need steps >= 1 or budget_hours > 0; got {config.steps=}, {config.budget_hours=}"
            )
        return budget

    def progress(self, step: int, first_step: int, elapsed: float) -> float:
        if self.seconds > 0:
            return time_progress(elapsed, self.seconds)
        return step_progress(step, first_step, self.steps)


def _all_processes(value) -> list:
    """[value of process 0, value of process 1, ...] for a JSON-serialisable value (iterator states)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([encoded.size]))  # [processes, 1]
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: encoded.size] = encoded
    gathered = multihost_utils.process_allgather(padded)  # [processes, max length]
    return [json.loads(row[: int(n)].tobytes()) for row, n in zip(gathered, lengths[:, 0], strict=True)]


def save_checkpoint(mngr: ocp.CheckpointManager, step: int, model, optimizer, meta: dict) -> None:
    """Writes the "params", "train" (optimizer state) and "meta" items of a workdir step."""
    mngr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(ckpt.params_of(model)),
            train=ocp.args.StandardSave({"optimizer": nnx.to_pure_dict(nnx.state(optimizer))}),
            meta=ocp.args.JsonSave(meta),
        ),
    )


def restore_checkpoint(mngr: ocp.CheckpointManager, workdir: Path, model, optimizer) -> dict | None:
    """Restores the latest step into `model` and `optimizer` in place and returns its meta; None if none.

    A params-only step (a converted checkpoint) restores the weights only and starts a fresh budget there.
    """
    step = mngr.latest_step()
    if step is None:
        return None
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


class _Window:
    """The step metrics since the last log record: fetched to the host and checked for non-finite losses."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []  # (step, device metrics), not yet fetched
        self.rows: list[dict] = []
        self.started = time.monotonic()

    def check(self, last_saved: int | None, workdir: Path) -> None:
        steps = [step for step, _ in self.pending]
        for step, row in zip(steps, jax.device_get([m for _, m in self.pending]), strict=True):
            if not np.isfinite(row["loss"]):
                where = "none was written" if last_saved is None else f"step {last_saved} in {workdir}"
                raise NonFiniteLossError(
                    f"non-finite loss {row['loss']} at step {step}; training stopped without saving. "
                    f"Last good checkpoint: {where} (a rerun resumes from it; lower the learning rate or "
                    "check the data first)."
                )
            self.rows.append(row)
        self.pending = []

    def summary(self) -> tuple[dict, int, float]:
        """(mean metrics, steps, seconds) since the window started; starts a new window."""
        means = {name: float(np.mean([row[name] for row in self.rows])) for name in self.rows[0]}
        steps, seconds = len(self.rows), time.monotonic() - self.started
        self.rows, self.started = [], time.monotonic()
        return means, steps, seconds


_BAR_KEYS = ("train/loss", "train/accuracy", "lr", "tokens_per_s", "mfu")


class _Throughput:
    """tokens/s and MFU of the model at a given rate of microbatch steps."""

    def __init__(self, config, model_cfg: ModelConfig, devices: int):
        self.tokens_per_step = config.microbatch * config.seq_len
        predictions = round(0.25 * config.seq_len)  # the recipe's masking rate, as the data pipeline's
        self.flops_per_token = metrics_lib.train_flops_per_token(model_cfg, config.seq_len, predictions)
        peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, model_cfg.dtype)
        self.peak = peak * devices if peak else None

    def __call__(self, steps: int, seconds: float) -> dict[str, float]:
        tokens_per_s = steps * self.tokens_per_step / seconds
        if self.peak is None:
            return {"tokens_per_s": tokens_per_s}
        return {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * self.flops_per_token / self.peak}


def train(
    config,
    workdir: str | Path,
    model_cfg: ModelConfig,
    batches: Iterator[dict],
    eval_batches: Callable[[], Iterable[dict]] | None = None,
) -> dict:
    """Pretrains (or resumes) the MaskedLM of `model_cfg` in `workdir` until the budget is spent.

    `batches` yields this process's rows of each microbatch as numpy arrays (see steps.py) and has
    JSON-serialisable get_state()/set_state(); `eval_batches()` returns a fresh iterable of such batches.
    Returns the last train log record, with "eval/..." entries when evaluated.
    """
    workdir = Path(workdir)
    main = jax.process_index() == 0
    mesh = make_mesh(config.num_devices)
    if config.microbatch % mesh.size:
        raise ValueError(f"microbatch={config.microbatch} must be a multiple of the {mesh.size} devices")
    budget = Budget.of(config)
    optimizer_config = OptimizerConfig(**dict(config.optimizer))
    model = MaskedLM(model_cfg, nnx.Rngs(config.seed))
    model.eval()  # pretraining runs without dropout: the original trains with the model in eval mode
    optimizer = nnx.Optimizer(model, make_optimizer(optimizer_config), wrt=nnx.Param)
    replicate(mesh, model, optimizer)
    metrics_log = metrics_lib.MetricsLog(workdir, enabled=main)
    throughput = _Throughput(config, model_cfg, mesh.size)

    with ckpt.manager(workdir, max_to_keep=config.keep_checkpoints) as mngr:
        meta = restore_checkpoint(mngr, workdir, model, optimizer) or {
            "step": 0,
            "first_step": 0,
            "elapsed_s": 0.0,
        }
        step, first_step, last_saved = meta["step"], meta["first_step"], mngr.latest_step()
        if meta.get("data_state") is not None:
            batches.set_state(meta["data_state"][jax.process_index()])
        metrics_log.truncate_after(step)
        started = time.monotonic() - meta["elapsed_s"]
        progress = budget.progress(step, first_step, time.monotonic() - started)
        window, record = _Window(), {"step": step}
        # cached_partial walks the model and optimizer graphs once, not at every call: nnx.jit's per-call
        # traversal of a 16-layer model costs milliseconds of host time per step.
        step_fn = nnx.cached_partial(train_step, model, optimizer)
        time_based = budget.seconds > 0
        bar_total = math.ceil(budget.seconds) if time_based else budget.steps
        bar_initial = int(meta["elapsed_s"]) if time_based else step - first_step
        with tqdm(total=bar_total, initial=bar_initial, disable=not (main and config.progress_bar)) as bar:
            while progress < 1.0:
                multiplier = budget_schedule(progress)
                accumulate = accumulation_steps(
                    progress, config.microbatch, config.final_batch, config.ramp_fraction
                )
                step_metrics = step_fn(
                    global_batch(mesh, next(batches)),
                    jnp.float32(multiplier),
                    jnp.int32(accumulate),
                )
                step += 1
                window.pending.append((step, step_metrics))
                elapsed = time.monotonic() - started
                progress = budget.progress(step, first_step, elapsed)
                finished = progress >= 1.0
                save_now = finished or step % config.checkpoint_every == 0
                if finished or save_now or step % config.log_every == 0:
                    window.check(last_saved, workdir)
                if finished or step % config.log_every == 0:
                    means, steps, seconds = window.summary()
                    record = {
                        "step": step,
                        **{f"train/{name}": value for name, value in means.items()},
                        "lr": optimizer_config.lr * multiplier,
                        "batch": accumulate * config.microbatch,
                        **throughput(steps, seconds),
                        "progress": min(progress, 1.0),
                        "elapsed_s": elapsed,
                    }
                    metrics_log.write(record)
                    bar.set_postfix(
                        {k.removeprefix("train/"): f"{record[k]:.4g}" for k in _BAR_KEYS if k in record}
                    )
                bar.update(int(elapsed) - bar.n if time_based else 1)
                if save_now:
                    meta = {
                        "step": step,
                        "first_step": first_step,
                        "elapsed_s": elapsed,
                        "seed": config.seed,
                        "data_state": _all_processes(batches.get_state()),
                    }
                    save_checkpoint(mngr, step, model, optimizer, meta)
                    last_saved = step
                if (
                    eval_batches is not None
                    and config.eval_every
                    and (finished or step % config.eval_every == 0)
                ):
                    scores = evaluate(model, (global_batch(mesh, b) for b in eval_batches()))
                    scores = {f"eval/{name}": value for name, value in scores.items()}
                    metrics_log.write({"step": step, **scores})
                    record = {**record, **scores}
        mngr.wait_until_finished()
    if main:
        metrics_lib.plot_losses(metrics_log.records(), workdir / metrics_lib.PLOT_FILE)
    return record


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


def held_out_rows(config, total_rows: int) -> int:
    """Rows at the end of the shards kept out of training for evaluation: eval_batches microbatches.

    0 when the run never evaluates (eval_every = 0); a ValueError when they would be half the corpus or more.
    """
    if not config.eval_every:
        return 0
    rows = config.eval_batches * config.microbatch
    if 2 * rows > total_rows:
        raise ValueError(
            f"evaluation holds out eval_batches x microbatch = {rows} rows, but the shards have only "
            f"{total_rows}: lower eval_batches or add text"
        )
    return rows


def train_and_evaluate(config, workdir: str | Path) -> dict:
    """Prepares the token shards (and tokenizer) of config.data, then pretrains in `workdir` (see `train`).

    A workdir that already has a tokenizer.json (a converted checkpoint, or an earlier run) keeps it. Every
    check that can fail on the inputs (model preset, sequence length, corpus) runs before the workdir is
    written, so a failed start leaves nothing that would confuse a later run.
    """
    model_cfg = model_config(config)
    Budget.of(config)
    from ufbert_jax.data import loader, shards  # grain and tokenizer training: only where data is read

    initialize_distributed(config)
    workdir = Path(workdir)
    tokenizer = ckpt.tokenizer_path(workdir)
    if not tokenizer.is_file():
        tokenizer = Path(config.data.tokenizer)
    shard_dir = shards.prepare_shards(
        list(config.data.sources),
        config.data.shard_dir,
        tokenizer,
        seq_len=config.seq_len,
        vocab_size=model_cfg.vocab_size,
    )
    vocab = load_tokenizer(tokenizer)
    check_vocabulary(vocab, model_cfg.vocab_size, str(tokenizer))
    if jax.process_index() == 0:
        prepare_workdir(workdir, model_cfg, tokenizer)
    processes = jax.process_count()
    if config.microbatch % processes:
        raise ValueError(f"microbatch={config.microbatch} must be a multiple of the {processes} processes")
    data_options = dict(
        batch_size=config.microbatch // processes,
        special=SpecialIds.of(vocab),
        vocab_size=vocab.get_vocab_size(),
        shard_index=jax.process_index(),
        shard_count=processes,
    )
    total_rows = len(shards.TokenShards(shard_dir))
    held_out = held_out_rows(config, total_rows)
    batches = loader.mlm_batches(
        shard_dir,
        seed=config.seed,
        worker_count=config.data.worker_count,
        rows=(0, total_rows - held_out),
        **data_options,
    )

    def eval_batches():
        # The held-out tail of the shards, never trained on, masked with its own seed.
        tail = (total_rows - held_out, total_rows)
        held = loader.mlm_batches(shard_dir, seed=config.seed + 1, num_epochs=1, rows=tail, **data_options)
        return itertools.islice(held, config.eval_batches)

    return train(config, workdir, model_cfg, batches, eval_batches if held_out else None)
