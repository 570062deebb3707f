"""The pretraining loop (`train`) and the whole run from a config (`train_and_evaluate`).

Each step: the budget fraction p (of steps or of wall-clock time) gives the learning-rate multiplier and the
accumulation count, the jitted step runs on the global microbatch, and the metrics are logged every
`log_every`, saved every `checkpoint_every` and evaluated every `eval_every` steps. Where things live:
the mesh (mesh.py), checkpoints and resume (checkpointing.py), the data (inputs.py), the metrics and their
log (metrics.py), the optimizer and schedule (optim.py), the jitted steps (steps.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from tqdm import tqdm

from ufbert_jax import workdir as workdir_lib
from ufbert_jax.config import ModelConfig, preset
from ufbert_jax.model import MaskedLM
from ufbert_jax.train import checkpointing, console, inputs, interrupt, lock, metrics, settings
from ufbert_jax.train import mesh as mesh_lib
from ufbert_jax.train.optim import (
    Accumulation,
    OptimizerConfig,
    accumulation_steps,
    budget_schedule,
    make_optimizer,
    step_progress,
    time_progress,
)
from ufbert_jax.train.plot import PLOT_FILE, plot_losses
from ufbert_jax.train.steps import evaluate, train_step

# Steps dispatched and not yet finished on the device that the host lets run before it waits: two keep the
# device busy through the host's per-step work (next batch, its copy, the dispatch) and bound how far the
# host's clock, which the time budget reads, runs ahead of the device.
IN_FLIGHT = 2
_BAR_KEYS = ("train/loss", "train/accuracy", "lr", "tokens_per_s", "mfu")


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
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
    def of(cls, config: ml_collections.ConfigDict) -> Budget:
        budget = cls(int(config.steps), 3600.0 * float(config.budget_hours))
        if budget.seconds <= 0 and budget.steps < 1:
            raise ValueError(
                f"need steps >= 1 or budget_hours > 0; got {config.steps=}, {config.budget_hours=}"
            )
        return budget

    def progress(self, step: int, first_step: int, elapsed: float) -> float:
        """The budget fraction p after `step` steps and `elapsed` seconds (a run counted from first_step)."""
        if self.seconds > 0:
            return time_progress(elapsed, self.seconds)
        return step_progress(step, first_step, self.steps)

    def bar(self, step: int, first_step: int, elapsed: float, enabled: bool) -> tqdm:
        """A progress bar in seconds (a time budget) or in steps, starting where the run is."""
        if self.seconds > 0:
            return tqdm(total=math.ceil(self.seconds), initial=int(elapsed), unit="s", disable=not enabled)
        return tqdm(total=self.steps, initial=step - first_step, unit="step", disable=not enabled)


def init_state(
    model_cfg: ModelConfig, optimizer_cfg: OptimizerConfig, seed: int, mesh: jax.sharding.Mesh
) -> tuple[MaskedLM, nnx.Optimizer]:
    """The freshly initialised model (in eval mode) and its optimizer, replicated on the mesh.

    The one place that builds the training state: the trainer and the throughput benchmarks
    (benchmarks/train_throughput.py, train_pipeline.py) call it, so they time the step the trainer runs.
    """
    model = MaskedLM(model_cfg, nnx.Rngs(seed))
    model.eval()  # pretraining runs without dropout: the original trains with the model in eval mode
    optimizer = nnx.Optimizer(model, make_optimizer(optimizer_cfg), wrt=nnx.Param)
    mesh_lib.replicate(mesh, model, optimizer)
    return model, optimizer


def _train_record(step: int, window: metrics.StepWindow, throughput: metrics.Throughput, **extra) -> dict:
    """The log record of `step`: the window's mean step metrics, `extra` (lr, batch, ...) and throughput."""
    means, steps, seconds = window.summary()
    return {
        "step": step,
        **{f"train/{name}": value for name, value in means.items()},
        **extra,
        **throughput(steps, seconds),
    }


def _eval_record(step: int, model: MaskedLM, mesh: jax.sharding.Mesh, batches: Iterable[dict]) -> dict:
    scores = evaluate(model, (mesh_lib.global_batch(mesh, b) for b in batches))
    return {"step": step, **{f"eval/{name}": value for name, value in scores.items()}}


def _postfix(record: dict) -> dict[str, str]:
    return {k.removeprefix("train/"): f"{record[k]:.4g}" for k in _BAR_KEYS if k in record}


def train(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    model_cfg: ModelConfig,
    batches: Iterator[dict],
    eval_batches: Callable[[], Iterable[dict]] | None = None,
    phases: metrics.Phases | None = None,
) -> dict:
    """Pretrains (or resumes) the MaskedLM of `model_cfg` in `workdir` until the budget is spent.

    `batches` yields this process's rows of each microbatch as numpy arrays (see steps.py) and has
    JSON-serialisable get_state()/set_state(); `eval_batches()` returns a fresh iterable of such batches.
    Returns the last train log record, with "eval/..." entries when evaluated. Invalid settings
    (settings.py), a workdir of another run (checkpointing.check_resume) and a workdir that another trainer
    holds (lock.py) are refused at the start, writing nothing; SIGINT or SIGTERM saves the current
    step and raises interrupt.TrainingInterrupted. `phases` (optional) collects where the host's time went.
    """
    settings.check(config)
    workdir = Path(workdir)
    with _claim(workdir, config, model_cfg):
        return _train(config, workdir, model_cfg, Budget.of(config), batches, eval_batches, phases)


@contextlib.contextmanager
def _claim(workdir: Path, config: ml_collections.ConfigDict, model_cfg: ModelConfig):
    """Refuses a workdir of another run before anything is written (checkpointing.check_resume), then holds
    the workdir for this trainer (lock.py: a second trainer is refused) until the run ends."""
    checkpointing.check_resume(workdir, config, model_cfg)
    with lock.hold(workdir, jax.process_index() == 0):
        yield


def _train(
    config: ml_collections.ConfigDict,
    workdir: Path,
    model_cfg: ModelConfig,
    budget: Budget,
    batches: Iterator[dict],
    eval_batches: Callable[[], Iterable[dict]] | None,
    phases: metrics.Phases | None,
) -> dict:
    """`train` after its checks.

    The host runs ahead of the device: a step is dispatched while up to IN_FLIGHT earlier steps still run,
    and nothing inside the step waits for the host (no conditional, see optim.accumulate_gradients), so
    the device never idles while the host fetches the next batch. The host reads the step metrics only
    every log_every steps (and before a save: a non-finite loss must stop the run before it is saved).
    """
    main = jax.process_index() == 0
    mesh = mesh_lib.make_mesh(config.num_devices)
    if config.microbatch % mesh.size:
        raise ValueError(f"microbatch={config.microbatch} must be a multiple of the {mesh.size} devices")
    lr, phases = config.optimizer.lr, phases or metrics.Phases()
    model, optimizer = init_state(model_cfg, OptimizerConfig(**dict(config.optimizer)), config.seed, mesh)
    log = metrics.MetricsLog(workdir, enabled=main)
    throughput = metrics.Throughput(model_cfg, config.microbatch, config.seq_len, mesh.size)
    # cached_partial walks the model and optimizer graphs once, not at every call: nnx.jit's per-call
    # traversal of a 16-layer model costs milliseconds of host time per step.
    step_fn = nnx.cached_partial(train_step, model, optimizer)
    every = lambda n, step: n > 0 and step % n == 0  # noqa: E731
    evaluates = eval_batches is not None and config.eval_every > 0

    with interrupt.StopSignals(jax.process_count() == 1) as stop:
        meta = checkpointing.restore(workdir, model, optimizer)
        step, first_step, elapsed = meta["step"], meta["first_step"], meta["elapsed_s"]
        if meta["data_state"] is not None:
            batches.set_state(meta["data_state"][jax.process_index()])
        accumulation = Accumulation(int(optimizer.opt_state.micro_steps[...]))  # mid-update resumes
        log.truncate_after(step)
        progress, started = budget.progress(step, first_step, elapsed), time.monotonic() - elapsed
        record, window, in_flight = {"step": step}, metrics.StepWindow(), collections.deque()
        if evaluates and step > first_step and (progress >= 1.0 or every(config.eval_every, step)):
            if not log.has(step, "eval/loss"):  # the run died between this step's save and its eval
                with phases("eval"):
                    log.write(record := _eval_record(step, model, mesh, eval_batches()))
        with (
            workdir_lib.manager(workdir, max_to_keep=config.keep_checkpoints) as mngr,
            budget.bar(step, first_step, elapsed, main and config.progress_bar and progress < 1.0) as bar,
        ):
            last_saved, interrupted = mngr.latest_step(), False
            while progress < 1.0 and not interrupted:
                multiplier = budget_schedule(progress)
                accumulate = accumulation_steps(
                    progress, config.microbatch, config.final_batch, config.ramp_fraction
                )
                with phases("input"):
                    local_batch = next(batches)
                with phases("to_device"):
                    global_batch = mesh_lib.global_batch(mesh, local_batch)
                step += 1
                with phases("dispatch"):
                    step_metrics = step_fn(
                        global_batch, jnp.float32(multiplier), apply_update=accumulation.due(accumulate)
                    )
                window.add(step, step_metrics)
                in_flight.append(step_metrics)
                if len(in_flight) > IN_FLIGHT:
                    with phases("device"):
                        jax.block_until_ready(in_flight.popleft())
                elapsed = time.monotonic() - started
                progress = budget.progress(step, first_step, elapsed)
                finished = progress >= 1.0
                interrupted = stop.signum is not None  # read once: a signal may land at any moment
                save_now = finished or every(config.checkpoint_every, step) or interrupted
                log_now = finished or every(config.log_every, step)
                if save_now or log_now:
                    with phases("device"):
                        jax.block_until_ready(list(in_flight))
                    in_flight.clear()
                    with phases("metrics"):
                        window.check(last_saved, workdir)
                if log_now:
                    extra = dict(
                        lr=lr * multiplier, batch=accumulate * config.microbatch, progress=min(progress, 1.0)
                    )
                    log.write(record := _train_record(step, window, throughput, **extra, elapsed_s=elapsed))
                    bar.set_postfix(_postfix(record))
                bar.update(int(elapsed) - bar.n if budget.seconds > 0 else 1)
                if save_now:
                    with phases("checkpoint"):
                        data_state = mesh_lib.all_processes(batches.get_state())
                        saved = checkpointing.meta(config, model_cfg, step, first_step, elapsed, data_state)
                        checkpointing.save(mngr, step, model, optimizer, saved)
                    last_saved = step
                if evaluates and (finished or every(config.eval_every, step)):
                    with phases("eval"):
                        scores = _eval_record(step, model, mesh, eval_batches())
                    log.write(scores)
                    record = {**record, **scores}
            with phases("checkpoint"):
                mngr.wait_until_finished()
    if main:
        plot_losses(log.records(), workdir / PLOT_FILE)
    if interrupted:
        raise interrupt.TrainingInterrupted(stop.signum, step, last_saved, workdir)
    return record


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Prepares the token shards (and tokenizer) of config.data, then pretrains in `workdir` (see `train`).

    A workdir that already has a tokenizer.json (a converted checkpoint, or an earlier run) keeps it. Every
    check that can fail on the inputs (settings, model preset, sequence length, budget, corpus, a workdir of
    another run or held by another trainer) runs before the workdir is written (but for its lock file,
    lock.py, held from before the data are prepared to the end of the run), so a failed start leaves nothing
    that would confuse a later run.
    """
    settings.check(config)
    model_cfg, budget, workdir = model_config(config), Budget.of(config), Path(workdir)
    mesh_lib.initialize_distributed(config)
    with _claim(workdir, config, model_cfg):
        batches = inputs.make_batches(config, workdir, model_cfg)
        if jax.process_index() == 0:
            checkpointing.prepare_workdir(workdir, model_cfg, batches.tokenizer)
        before = console.latest_step(workdir)
        record = _train(config, workdir, model_cfg, budget, batches.train, batches.eval, None)
    if jax.process_index() == 0:  # the closing summary (or: it had finished before), on stdout
        print(console.summary(config, workdir, already_finished=before == console.latest_step(workdir)))
    return record
