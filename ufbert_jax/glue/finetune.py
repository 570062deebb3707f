"""Fine-tuning a pretrained workdir on GLUE tasks, the paper's way, and scoring the dev splits.

Shape legend: B batch, S sequence, C classes (1 for STS-B regression).

Recipe (the paper's, docs/glue.md): AdamW (0.9, 0.98), eps 1e-6, no weight decay, lr 4e-5 with 10%
linear warmup then cosine decay to 0, batch 16, 5 epochs, dropout 0.1 on, max length 128; the dev score
after the last epoch is the one reported. Its values live in configs/glue.py (with CoLA's own epochs);
`Recipe` is the resolved, typed form for one task. Cross-entropy for classification, squared error for
STS-B. Each task starts from the pretrained encoder and a freshly initialised pooler and head.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from ufbert_jax import workdir as workdir_lib
from ufbert_jax.config import ModelConfig
from ufbert_jax.data import bucketing
from ufbert_jax.data.tokenizer import SpecialIds, check_vocabulary, encode_texts
from ufbert_jax.glue import report, scoring
from ufbert_jax.glue.tasks import Skipped, TaskData, TaskSpec, get_task, load_hub, load_local
from ufbert_jax.model import SequenceClassifier

LOSS_LOG_EVERY = 25  # steps between progress-bar loss updates (each one waits for the device)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The fine-tuning settings of one task (field meanings in configs/glue.py)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    lr: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    warmup_fraction: float
    dropout: float
    max_len: int
    buckets: tuple[int, ...]
    max_train_examples: int
    fff_impl: str
    seed: int

    @classmethod
    def for_task(cls, config: Mapping, task: str) -> Recipe:
        """The config's top-level fields with the set fields of `config["task_overrides"][task]` on top."""
        # Unset per-task fields are None (placeholders in configs/glue.py): the top-level value applies.
        given = config.get("task_overrides", {}).get(task, {})
        overrides = {name: value for name, value in given.items() if value is not None}
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"task_overrides.{task} has unknown fields {unknown}")
        values = {f.name: overrides.get(f.name, config[f.name]) for f in dataclasses.fields(cls)}
        values["buckets"] = tuple(values["buckets"])
        return cls(**values)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction={self.warmup_fraction} must be in [0, 1]")


@functools.cache
def adamw(b1: float, b2: float, eps: float, weight_decay: float) -> optax.GradientTransformation:
    """AdamW whose learning rate is a state entry that the train step sets (optax.inject_hyperparams).

    Cached, and the schedule lives outside it, so every task with the same head shape reuses one compiled
    train step: a schedule closure inside the optimizer would be new static state, compiled again per task.
    """
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=0.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
    )


def lr_schedule(recipe: Recipe, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr` over warmup_fraction of the steps, then cosine decay to 0."""
    warmup = round(recipe.warmup_fraction * total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=recipe.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1)
    )


def _loss(model: SequenceClassifier, batch: dict, regression: bool) -> jax.Array:
    """Weighted mean loss over the real rows of a padded batch (padding rows have weight 0)."""
    outputs = model(batch["token_ids"], batch["attention_mask"])  # [B, C]
    if regression:
        per_example = jnp.square(outputs[:, 0] - batch["labels"])  # [B]
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(outputs, batch["labels"])  # [B]
    weights = batch["weights"]  # [B]
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@functools.partial(nnx.jit, donate_argnames=("model", "optimizer"), static_argnames="regression")
def train_step(
    model: SequenceClassifier,
    optimizer: nnx.Optimizer,
    batch: dict,
    learning_rate: jax.Array,
    regression: bool,
) -> jax.Array:
    """One AdamW step at `learning_rate` (dropout on: the model is in train mode); returns the loss before
    the step. `optimizer` must wrap `adamw(...)`."""
    optimizer.opt_state.hyperparams["learning_rate"][...] = learning_rate
    loss, grads = nnx.value_and_grad(_loss)(model, batch, regression)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def predict_step(model: SequenceClassifier, token_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """token_ids, attention_mask [B, S] -> outputs [B, C]."""
    return model(token_ids, attention_mask)


def _device_batch(batch: bucketing.Batch, labels: np.ndarray) -> dict:
    """The train step's inputs: the padded batch, its rows' labels [B] and weights [B] (0 on padding rows)."""
    return {
        "token_ids": batch.token_ids,
        "attention_mask": batch.attention_mask,
        "labels": np.where(batch.real, labels[batch.index], 0).astype(labels.dtype),
        "weights": batch.real.astype(np.float32),
    }


def predict(
    model: SequenceClassifier, sequences: list[np.ndarray], recipe: Recipe, pad_id: int, regression: bool
) -> np.ndarray:
    """Predictions [n] (class indices, or scores for regression) with dropout off, in example order."""
    model.eval()
    lengths = bucketing.bucket_lengths(recipe.buckets, recipe.max_len)
    predictions = np.zeros(len(sequences), np.float32 if regression else np.int32)
    for batch in bucketing.batches(sequences, recipe.eval_batch_size, lengths, pad_id):
        outputs = np.asarray(predict_step(model, batch.token_ids, batch.attention_mask))  # [B, C]
        values = outputs[:, 0] if regression else outputs.argmax(axis=-1)  # [B]
        predictions[batch.index[batch.real]] = values[batch.real]
    return predictions


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """What every task starts from: the workdir's model config, tokenizer and checkpoint step."""

    workdir: Path
    config: ModelConfig
    tokenizer: Tokenizer
    step: int | None

    @classmethod
    def load(cls, workdir: str | Path, step: int | None = None) -> Pretrained:
        """Reads model.json and tokenizer.json; a tokenizer other than the model's (workdir.check_tokenizer),
        without the special tokens or with ids beyond the model's vocabulary is a ValueError, a missing
        checkpoint step a FileNotFoundError and one whose params changed since the save a ChecksumError."""
        workdir = Path(workdir)
        cfg = workdir_lib.load_config(workdir)
        tokenizer = workdir_lib.load_tokenizer(workdir)  # the one the model was trained with
        tokenizer.no_truncation()  # truncation and padding are ours (encode_texts, ufbert_jax.data.bucketing)
        tokenizer.no_padding()
        SpecialIds.of(tokenizer, workdir_lib.tokenizer_path(workdir))  # before any task, naming the file
        check_vocabulary(tokenizer, cfg.vocab_size, str(workdir))
        workdir_lib.check_step(workdir, step)  # a missing or changed checkpoint is refused before any task
        return cls(workdir, cfg, tokenizer, step)

    def classifier(self, num_labels: int, recipe: Recipe) -> tuple[SequenceClassifier, int]:
        """A SequenceClassifier with the pretrained encoder restored; returns it and the restored step."""
        if recipe.max_len > self.config.max_len:
            raise ValueError(f"max_len={recipe.max_len} exceeds the model's max_len={self.config.max_len}")
        cfg = self.config.replace(dropout=recipe.dropout, fff_impl=recipe.fff_impl)
        model = SequenceClassifier(cfg, num_labels, nnx.Rngs(params=recipe.seed, dropout=recipe.seed + 1))
        step = workdir_lib.restore_params(self.workdir, model, self.step)
        return model, step


def _commit_to_device(*nodes: nnx.Module | nnx.Optimizer) -> None:
    """Places every array of `nodes` on the default device. Freshly initialised arrays are uncommitted while
    a jitted step returns committed ones; without this the second step would compile all over again."""
    nnx.update(nodes, jax.device_put(nnx.state(nodes), jax.devices()[0]))


def train(
    model: SequenceClassifier,
    sequences: list[np.ndarray],
    labels: np.ndarray,
    recipe: Recipe,
    pad_id: int,
    regression: bool,
    name: str,
) -> dict:
    """Trains `model` in place for recipe.epochs with a progress bar; returns the number of steps and the
    mean loss of each epoch. `sequences` are the encoded examples, `labels` [n] their labels."""
    rng = np.random.default_rng(recipe.seed)
    lengths = bucketing.bucket_lengths(recipe.buckets, recipe.max_len)
    total_steps = recipe.epochs * bucketing.num_batches(sequences, recipe.batch_size, lengths)
    learning_rates = np.asarray(lr_schedule(recipe, total_steps)(np.arange(total_steps)), np.float32)
    optimizer = nnx.Optimizer(
        model, adamw(recipe.b1, recipe.b2, recipe.eps, recipe.weight_decay), wrt=nnx.Param
    )
    _commit_to_device(model, optimizer)
    model.train()
    # The graph of model and optimizer (~540 arrays) is flattened once here: a plain nnx.jit call walks it
    # in Python every time, host work of the order of a short 16 x 128 step (docs/glue.md).
    cached_step = nnx.cached_partial(train_step, model, optimizer)
    epoch_losses, step = [], 0
    with tqdm(total=total_steps, desc=f"{name:>5}", unit="step", dynamic_ncols=True) as bar:
        for _ in range(recipe.epochs):
            losses = []
            for batch in bucketing.batches(sequences, recipe.batch_size, lengths, pad_id, rng):
                losses.append(cached_step(_device_batch(batch, labels), learning_rates[step], regression))
                step += 1
                bar.update()
                if step % LOSS_LOG_EVERY == 0:
                    bar.set_postfix(loss=f"{float(losses[-1]):.4f}")
            epoch_losses.append(float(np.mean(jax.device_get(losses))))
            if not np.isfinite(epoch_losses[-1]):
                raise FloatingPointError(f"{name}: non-finite training loss {epoch_losses[-1]}")
    return {"steps": total_steps, "train_loss_per_epoch": epoch_losses}


def finetune_task(data: TaskData, pretrained: Pretrained, recipe: Recipe) -> dict:
    """Fine-tunes on data.train and scores every dev split after the last epoch; returns the task's record."""
    spec, start = data.spec, time.perf_counter()
    train_split = data.train
    if 0 < recipe.max_train_examples < len(train_split):
        chosen = np.random.default_rng(recipe.seed).choice(
            len(train_split), recipe.max_train_examples, replace=False
        )
        train_split = train_split.subset(np.sort(chosen))
    pad_id = SpecialIds.of(pretrained.tokenizer).pad
    regression = spec.labels is None
    model, step = pretrained.classifier(spec.num_labels, recipe)
    sequences = encode_texts(pretrained.tokenizer, train_split.texts, recipe.max_len)
    trained = train(model, sequences, train_split.labels, recipe, pad_id, regression, spec.name)
    dev = {}
    for name, split in data.dev.items():
        dev_sequences = encode_texts(pretrained.tokenizer, split.texts, recipe.max_len)
        predictions = predict(model, dev_sequences, recipe, pad_id, regression)
        dev[name] = {
            "examples": len(split),
            "metrics": scoring.compute(spec.metrics, split.labels, predictions),
        }
    return {
        "status": "ok",
        "checkpoint_step": step,
        "recipe": dataclasses.asdict(recipe),
        "train_examples": len(train_split),
        "train_source": train_split.source,
        **trained,
        "dev": dev,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _record(tasks: dict, pretrained: Pretrained) -> dict:
    """The results record of the tasks run so far (see docs/glue.md, results.json)."""
    rows = {
        row: scored["metrics"] for record in tasks.values() for row, scored in record.get("dev", {}).items()
    }
    row_tasks = {row: name for name, record in tasks.items() for row in record.get("dev", {})}
    return {
        "workdir": str(pretrained.workdir),
        "model": dataclasses.asdict(pretrained.config),
        "tasks": dict(tasks),
        "averages": scoring.averages(rows, row_tasks),
    }


def run_glue(
    config: Mapping,
    pretrained: Pretrained,
    source: Callable[[TaskSpec], TaskData | Skipped],
    on_update: Callable[[dict], object] | None = None,
) -> dict:
    """Runs every task of config["tasks"] (comma-separated) from `source`; returns the results record.

    A task the source cannot provide is recorded as skipped with the reason. A task that fails (bad data,
    a diverging loss, any error) is recorded as failed with the error, its traceback printed, and the
    others still run. After each task `on_update` gets the record so far (eval_glue.py writes it to
    results.json), so a crash or a kill never loses finished tasks. Bad task names or recipe values
    fail here, before any task runs.
    """
    specs = [get_task(name) for name in config["tasks"].split(",") if name.strip()]
    for name in config.get("task_overrides", {}):
        get_task(name)  # a misspelt task in the overrides is an error, not a silently ignored setting
    recipes = {spec.name: Recipe.for_task(config, spec.name) for spec in specs}  # bad values fail up front
    tasks: dict[str, dict] = {}
    for spec in specs:
        try:
            data = source(spec)
            if isinstance(data, Skipped):
                tasks[spec.name] = {"status": "skipped", "reason": data.reason}
                print(f"{spec.name}: skipped ({data.reason})")
            else:
                tasks[spec.name] = finetune_task(data, pretrained, recipes[spec.name])
        except Exception as err:  # one bad task must not cost the others (or the finished ones)
            traceback.print_exc()
            tasks[spec.name] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            print(f"{spec.name}: failed ({type(err).__name__}: {err})")
        if on_update is not None:
            on_update(_record(tasks, pretrained))
    return _record(tasks, pretrained)


def evaluate_workdir(
    config: Mapping, workdir: str | Path, glue_dir: str | Path | None, out: str | Path
) -> dict:
    """`run_glue` of `workdir` (its latest step, or config["step"] when >= 0) on config["tasks"] from
    `glue_dir` in the original TSV layout (None: the Hub); results.json and results.md in `out` are
    rewritten after every task (and at the end, also when no task ran). The results of other tasks that
    `out` already holds for the same checkpoint are kept and averaged with the new ones
    (report.earlier_tasks; one of another workdir, model or step is refused before any task runs).
    Returns the results record, the kept tasks included."""
    source = load_hub if glue_dir is None else functools.partial(load_local, root=glue_dir)
    header = {"source": "hub" if glue_dir is None else str(glue_dir)}
    pretrained = Pretrained.load(workdir, step=None if config["step"] < 0 else config["step"])
    step = workdir_lib.latest_step(workdir) if pretrained.step is None else pretrained.step
    earlier = report.earlier_tasks(out, pretrained.workdir, dataclasses.asdict(pretrained.config), step)

    def merged(record: dict) -> dict:
        return header | _record({**earlier, **record["tasks"]}, pretrained)

    def save(record: dict) -> None:
        report.write(merged(record), out)

    results = merged(run_glue(config, pretrained, source, on_update=save))
    report.write(results, out)
    return results
