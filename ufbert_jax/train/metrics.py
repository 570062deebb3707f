"""What a run reports: the step-metrics window and its non-finite check, throughput (model FLOPs, MFU),
and the metrics.jsonl log."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import jax
import numpy as np

from ufbert_jax import io
from ufbert_jax.config import ModelConfig

log = logging.getLogger("ufbert_jax.train")

METRICS_FILE = "metrics.jsonl"

# Dense bf16 peak FLOP/s per chip, by a substring of jax.Device.device_kind (vendor data sheets, without
# sparsity). Unknown kinds (CPUs included) have no MFU.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def train_flops_per_token(cfg: ModelConfig, seq_len: int, predictions: int) -> float:
    """Model FLOPs of one training token (forward + backward = 3x forward, matmuls only).

    Per layer and token: QKV and output projections 2 * 4H^2, attention scores and context 2 * 2SH, the
    feedforward 2 * 2HW, where W is ff_width for the dense model and K*N for the FFF: training runs the
    masked dense form (every node's logit and a dense output product), so it is counted as a dense FF of
    K*N neurons, not the K*(D+1) neurons that conditional inference touches. Plus the decoder 2HV on
    `predictions` of `seq_len` positions (sparse prediction). Embedding lookups, norms, softmax and GELU
    are not counted (the usual MFU convention).
    """
    hidden = cfg.hidden
    width = cfg.ff_width if cfg.feedforward == "dense" else cfg.fff_trees * cfg.fff_nodes
    per_layer = 8 * hidden * hidden + 4 * seq_len * hidden + 4 * hidden * width
    decoder = 2 * hidden * cfg.vocab_size * predictions / seq_len
    return 3.0 * (cfg.layers * per_layer + decoder)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Peak FLOP/s of one device for `dtype` compute, or None where unknown (then no MFU is reported)."""
    if dtype != "bfloat16":
        return None
    return next((peak for kind, peak in PEAK_BF16_FLOPS.items() if kind in device_kind), None)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; nothing after the last good checkpoint was saved."""


class StepWindow:
    """The step metrics since the last log record: fetched to the host and checked for non-finite losses."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []  # (step, device metrics), not yet fetched
        self.rows: list[dict] = []
        self.started = time.monotonic()

    def add(self, step: int, metrics: dict) -> None:
        """Queues the (device) metrics of `step` without waiting for them."""
        self.pending.append((step, metrics))

    def check(self, last_saved: int | None, workdir: Path) -> None:
        """Fetches the queued metrics; NonFiniteLossError at the first non-finite loss."""
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


class Phases:
    """Host wall-clock seconds of the training loop by what the host was doing, summed over the run.

    input: waiting for the next batch of the data iterator; to_device: placing it on the devices;
    dispatch: the step call (tracing and compiling at the first call of each program, then launching);
    device: waiting for the device to finish a step (the loop's bound on steps in flight): the time the
    device, not the host, sets; metrics: reading the step metrics and writing the log; eval; checkpoint.
    """

    NAMES = ("input", "to_device", "dispatch", "device", "metrics", "eval", "checkpoint")

    def __init__(self):
        self.seconds = dict.fromkeys(self.NAMES, 0.0)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


class Throughput:
    """tokens/s and MFU of the model at a given rate of microbatch steps of [microbatch, seq_len] tokens."""

    def __init__(self, model_cfg: ModelConfig, microbatch: int, seq_len: int, devices: int):
        self.tokens_per_step = microbatch * seq_len
        predictions = round(0.25 * seq_len)  # the recipe's masking rate, as the data pipeline's
        self.flops_per_token = train_flops_per_token(model_cfg, seq_len, predictions)
        peak = peak_flops(jax.devices()[0].device_kind, model_cfg.dtype)
        self.peak = peak * devices if peak else None

    def __call__(self, steps: int, seconds: float) -> dict[str, float]:
        tokens_per_s = steps * self.tokens_per_step / seconds
        if self.peak is None:
            return {"tokens_per_s": tokens_per_s}
        return {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * self.flops_per_token / self.peak}


class MetricsLog:
    """One log line per record and the same record appended to workdir/metrics.jsonl (process 0 only).

    Appending is the only write during a run, so a kill leaves at most a torn last line; reading drops
    lines that do not parse (with a warning naming them), and the resume rewrite is atomic.
    """

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.path = Path(workdir) / METRICS_FILE
        self.enabled = enabled

    def _read(self) -> tuple[list[dict], int]:
        """(the records that parse, how many lines did not)."""
        if not self.path.is_file():
            return [], 0
        records, bad = [], 0
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError(f"not a record with an integer step: {line[:80]!r}")
            except ValueError as error:
                where = (
                    "the last line (torn by a kill mid-write)" if number == len(lines) else f"line {number}"
                )
                log.warning("%s: dropping %s: %s", self.path, where, error)
                bad += 1
                continue
            records.append(record)
        return records, bad

    def records(self) -> list[dict]:
        """The records of metrics.jsonl in file order (lines that do not parse are dropped)."""
        return self._read()[0]

    def has(self, step: int, key: str) -> bool:
        """Whether a record of `step` holds `key` (e.g. "eval/loss")."""
        return any(record["step"] == step and key in record for record in self.records())

    def truncate_after(self, step: int) -> None:
        """Drops records past `step` (after a resume they describe work the restored state never saw) and
        lines that do not parse; rewrites the file atomically, and only when something is dropped."""
        if not self.enabled:
            return
        records, bad = self._read()
        kept = [record for record in records if record["step"] <= step]
        if bad or len(kept) < len(records):
            io.write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        io.append_text(self.path, json.dumps(record) + "\n")  # an error names the file (a full disk)
