"""Whole-model inference: crammedBERT-3072 vs UltraFastBERT-1x11 (every FFF implementation), side by side.

    python benchmarks/model_inference.py [--batches 1,8,32,128,512] [--seq 128] [--rounds 3] [--quick]
                                         [--impls auto,masked,conditional,cpu|pallas] [--heads encoder,mlm]
                                         [--torch-compile-batches 128] [--no-torch] [--out DIR]

Shape legend: B batch (sequences), S sequence, H hidden, V vocabulary.

Every model has the paper's shape (16 layers, H 768, 12 heads, V 32768, S 128) and random weights; float32
on CPU, bfloat16 compute on GPU (float32 parameters, as in the model). Rows, per batch size B:

- ``crammedbert-3072``: our dense model; the baseline of every speedup.
- ``ultrafastbert-1x11/IMPL``: one tree of depth 11 per layer, for each FFF implementation available here
  ("auto", "masked", "conditional", and "cpu" on CPU or "pallas" on GPU).
- heads: ``encoder`` (to the final hidden states [B, S, H]) and ``mlm`` (with the tied decoder: logits
  [B, S, V]); the MLM head is timed for crammedBERT and "auto" only (the head is the same matmul for all).
- on GPU, unless ``--no-torch``: Hugging Face ``transformers.BertModel`` in PyTorch with the same shapes
  (16 x 768, 12 heads, 3072, V 32768, SDPA attention, bf16 weights), eager and, for the batch sizes of
  ``--torch-compile-batches``, ``torch.compile``; timed with CUDA events over back-to-back calls.

Throughput: chained jitted calls in one ``lax.fori_loop`` (benchmarks/timing.py: each call's output feeds
the next call's operand through an optimization barrier, so nothing is hoisted or skipped), medians of
``--rounds`` loops. Latency: one 128-token sequence as one jitted call from Python (dispatch included),
median of several calls. Prints a table with the speedups over crammedBERT-3072 (same head, same run) and
writes ``inference_{cpu,gpu}.json`` and ``.png`` (speedup vs batch size) to ``--out`` (default docs/).

Expected time: the full GPU set (5 batch sizes, 6 JAX encoder rows, 2 MLM rows, torch eager at every size
and compiled at 128) about 3-4 minutes on an H200, most of it compilation. On a 2-core CPU ``--batches 1,32
--quick`` (1 round) takes about 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import timing
from flax import nnx
from hf_shape import BERT_SHAPE
from ufbert_jax.kernels import fff_cpu

from ufbert_jax import config, model

BASELINE = "crammedbert-3072"
FFF_MODEL = "ultrafastbert-1x11"
HEADS = ("encoder", "mlm")
LATENCY_CALLS = 20


def parse(argv: list[str]) -> argparse.Namespace:
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    names = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=ints, default=[1, 8, 32, 128, 512], help="sequences per call")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, default=3, help="timed loops per row (median reported)")
    parser.add_argument("--loop-s", type=float, default=0.25, help="wall time of one timed loop")
    parser.add_argument("--quick", action="store_true", help="one round, one call per loop (CI-size time)")
    parser.add_argument("--impls", type=names, default=None, help="FFF impls (default: all available)")
    parser.add_argument("--heads", type=names, default=list(HEADS))
    parser.add_argument("--torch-compile-batches", type=ints, default=[128], help="'' for none")
    parser.add_argument("--no-torch", action="store_true", help="skip Hugging Face BertModel on GPU")
    parser.add_argument("--out", default="docs", help="directory for inference_{cpu,gpu}.{json,png}")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.loop_s = 1, 0.0
    return args


def available_impls(backend: str) -> list[str]:
    impls = ["auto", "masked", "conditional"]
    if backend == "gpu":
        impls.append("pallas")
    if backend == "cpu" and fff_cpu.is_available():
        impls.append("cpu")
    return impls


def machine() -> dict:
    """What ran: the JAX device, and on CPU its model, family/model numbers and vector ISA."""
    info = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "jax": jax.__version__}
    if info["backend"] == "cpu":
        fields = {}
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    fields.setdefault(key.strip(), value.strip())
        except OSError:
            pass
        flags = set(fields.get("flags", "").split())
        info |= {
            "cpu": fields.get("model name", platform.processor()),
            "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
            "isa": "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "other"),
            "cores": os.cpu_count(),
            "fff_cpu_build": fff_cpu.isa() if fff_cpu.is_available() else None,
        }
    return info


def jax_rows(args: argparse.Namespace, dtype: str) -> list[tuple[str, str, config.ModelConfig]]:
    """(row name, head, config) of every JAX row."""
    impls = args.impls or available_impls(jax.default_backend())
    rows = []
    for head in args.heads:
        rows.append((f"{BASELINE}/{head}", head, config.preset(BASELINE, dtype=dtype, dropout=0.0)))
        for impl in impls if head == "encoder" else ["auto"]:
            cfg = config.preset(FFF_MODEL, dtype=dtype, dropout=0.0, fff_impl=impl)
            rows.append((f"{FFF_MODEL}/{impl}/{head}", head, cfg))
    return rows


class JaxModels:
    """One random MaskedLM per architecture; other FFF implementations share its parameters."""

    def __init__(self):
        self._states = {}

    def split(self, cfg: config.ModelConfig):
        """(graphdef, state) of a MaskedLM with cfg: state shared by all configs that differ in fff_impl."""
        key = cfg.replace(fff_impl="auto")
        if key not in self._states:
            self._states[key] = nnx.split(model.MaskedLM(key, nnx.Rngs(0)))[1]
        graphdef, _ = nnx.split(nnx.eval_shape(lambda: model.MaskedLM(cfg, nnx.Rngs(0))))
        return graphdef, self._states[key]


def forward(graphdef, head: str):
    """f(ids, state, mask) -> [B * S, H] hidden states or [B * S, V] logits (2-D for the chained loop)."""

    def run(ids, state, mask):
        mlm = nnx.merge(graphdef, state)
        out = mlm.encoder(ids, mask) if head == "encoder" else mlm(ids, mask)
        return out.reshape(-1, out.shape[-1])

    return run


def chained_loop(graphdef, state, head: str, batch: int, seq: int, loop_s: float, rng) -> timing.ChainedLoop:
    """Compiled chained jitted calls (benchmarks/timing.py) of one row on B = `batch` x S = `seq` ids."""
    run = forward(graphdef, head)
    ids = jnp.asarray(rng.integers(1, 32768, (batch, seq)), jnp.int32)  # [B, S]
    mask = jnp.ones((batch, seq), jnp.int32)  # [B, S]

    def op(x, small, state, mask):  # small: the chained operand, which x (the ids) is tied to
        return run(x, state, mask)

    return timing.ChainedLoop(op, [ids], (jnp.zeros((), jnp.float32), state, mask), 1, loop_s, 10_000)


def latency_jax(graphdef, state, args: argparse.Namespace, rng) -> float:
    """Median ms of one jitted encoder call on one sequence, from Python (dispatch included)."""
    run = jax.jit(forward(graphdef, "encoder"))
    ids = jnp.asarray(rng.integers(1, 32768, (1, args.seq)), jnp.int32)
    mask = jnp.ones((1, args.seq), jnp.int32)
    run(ids, state, mask).block_until_ready()
    times = []
    for _ in range(1 if args.quick else LATENCY_CALLS):
        start = time.perf_counter()
        run(ids, state, mask).block_until_ready()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def torch_rows(args: argparse.Namespace) -> list[tuple[str, bool]]:
    rows = [("hf-bert/eager/encoder", False)]
    if args.torch_compile_batches:
        rows.append(("hf-bert/compile/encoder", True))
    return rows


class TorchBert:
    """Hugging Face BertModel with our shapes, random weights, bf16, SDPA attention, on the GPU."""

    def __init__(self):
        import torch
        import transformers

        self.torch = torch
        cfg = transformers.BertConfig(**BERT_SHAPE, max_position_embeddings=512)
        self.model = transformers.BertModel(cfg, add_pooling_layer=False).to("cuda", torch.bfloat16).eval()
        self.compiled = torch.compile(self.model)

    def time(self, batch: int, seq: int, compiled: bool, rounds: int, calls: int) -> tuple[float, float]:
        """(median ms per call over back-to-back calls, timed with CUDA events; median ms of one call)."""
        torch = self.torch
        fn = self.compiled if compiled else self.model
        ids = torch.randint(1, 32768, (batch, seq), device="cuda")
        mask = torch.ones((batch, seq), dtype=torch.long, device="cuda")
        with torch.inference_mode():
            for _ in range(3):
                fn(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize()
            per_call = []
            for _ in range(rounds):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(calls):
                    fn(input_ids=ids, attention_mask=mask)
                stop.record()
                torch.cuda.synchronize()
                per_call.append(start.elapsed_time(stop) / calls)
            single = []
            for _ in range(LATENCY_CALLS):
                t0 = time.perf_counter()
                fn(input_ids=ids, attention_mask=mask)
                torch.cuda.synchronize()
                single.append(1e3 * (time.perf_counter() - t0))
        return float(np.median(per_call)), float(np.median(single))


def table(results: dict) -> str:
    """ms per call and speedup over crammedBERT-3072 (same head) per row and batch size."""
    batches = results["batches"]
    lines = [
        f"{results['machine']}",
        f"{'row':40s} " + " ".join(f"{f'B={b} ms (x)':>19s}" for b in batches) + f" {'latency ms':>11s}",
    ]
    for row, cells in results["rows"].items():
        base = results["rows"][f"{BASELINE}/{row.rsplit('/', 1)[1]}"]
        parts = []
        for b in batches:
            ms, ref = cells["ms"].get(str(b)), base["ms"].get(str(b))
            parts.append(f"{ms:10.2f} ({ref / ms:5.2f}x)" if ms and ref else f"{'-':>19s}")
        latency = cells.get("latency_ms")
        lines.append(f"{row:40s} " + " ".join(parts) + (f" {latency:11.2f}" if latency else f" {'-':>11s}"))
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    """Speedup over crammedBERT-3072 (same head) against batch size, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for row, cells in results["rows"].items():
        if row.startswith(BASELINE):
            continue
        base = results["rows"][f"{BASELINE}/{row.rsplit('/', 1)[1]}"]["ms"]
        batches = [b for b in results["batches"] if str(b) in cells["ms"] and str(b) in base]
        speedup = [base[str(b)] / cells["ms"][str(b)] for b in batches]
        style = "o-" if row.endswith("/encoder") else "s--"
        ax.plot(batches, speedup, style, label=row, alpha=0.6 if row.startswith("hf-") else 1.0)
    ax.axhline(1.0, color="gray", lw=0.8)
    m = results["machine"]
    where = m["device"] if m["backend"] != "cpu" else f"{m['cpu']} ({m['isa']})"
    ax.set(
        xscale="log",
        xlabel=f"batch size (sequences of {results['seq']} tokens)",
        ylabel="speedup over crammedBERT-3072 (same head)",
        title=f"Whole-model inference, {results['dtype']}, {where}",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(out, dpi=120, bbox_inches="tight")


def main(argv: list[str]) -> None:
    args = parse(argv)
    backend = jax.default_backend()
    dtype = "bfloat16" if backend == "gpu" else "float32"
    rng = np.random.default_rng(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "dtype": dtype, "seq": args.seq, "batches": args.batches, "rows": {}}
    print(results["machine"], flush=True)
    models = JaxModels()
    rows = [(name, head, *models.split(cfg)) for name, head, cfg in jax_rows(args, dtype)]
    started = time.perf_counter()
    for batch in args.batches:  # every row at one batch size, interleaved round by round: load hits all alike
        loops = {
            name: chained_loop(graphdef, state, head, batch, args.seq, args.loop_s, rng)
            for name, head, graphdef, state in rows
        }
        samples = timing.interleaved({name: loop.sample for name, loop in loops.items()}, args.rounds)
        for name, seconds in samples.items():
            ms = 1e3 * float(np.median(seconds))
            results["rows"].setdefault(name, {"ms": {}})["ms"][str(batch)] = ms
            print(f"{name} B={batch}: {ms:.2f} ms", flush=True)
        del loops
    for name, head, graphdef, state in rows:
        if head == "encoder":
            results["rows"][name]["latency_ms"] = latency_jax(graphdef, state, args, rng)
    if backend == "gpu" and not args.no_torch:
        bert = TorchBert()
        for name, compiled in torch_rows(args):
            cells = results["rows"].setdefault(name, {"ms": {}})
            for batch in args.torch_compile_batches if compiled else args.batches:
                ms, single = bert.time(batch, args.seq, compiled, args.rounds, 10)
                cells["ms"][str(batch)] = ms
                if batch == 1:
                    cells["latency_ms"] = single
                print(f"{name} B={batch}: {ms:.2f} ms", flush=True)
    results["seconds"] = time.perf_counter() - started
    print(table(results))
    stem = out / f"inference_{backend}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and {stem}.png ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
