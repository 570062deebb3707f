"""Speed map of the paper's rows: the FFF layer in inference and training and the whole encoder, one command.

    python benchmarks/speed_map.py [--rows ROW,...] [--parts layer,train,encoder] [--tokens 16384]
                                   [--batch 32] [--seq 128] [--rounds 3] [--quick] [--out docs/results]
    python benchmarks/speed_map.py --plot A.json [B.json ...] [--out DIR]

Shape legend: T tokens, H hidden, K trees, D depth, B batch, S sequence.

Rows: crammedBERT-3072 (dense feedforward, the baseline of every speedup) and UltraFastBERT-KxD for the
paper's K x D (``ufbert_jax.config.PAPER_PRESETS`` without crammedBERT-4095). Parts; within each, every row
is timed side by side with its baseline (interleaved round by round, medians of chained jitted calls:
benchmarks/timing.py):

- ``layer``: one feedforward's forward on x [T, H] (T = --tokens, H 768) against XLA's dense 768-3072-768
  feedforward (benchmarks/layer_ops.py); forms "auto" and every inference form of the platform (CPU:
  "masked" and the custom call "cpu"; GPU: "masked" and "pallas").
- ``train``: the layer's forward and backward, dx and every weight gradient (benchmarks/fff_train_layer.py's
  training call) against the dense feedforward's; forms "auto" and every training form (CPU: "masked",
  "sparse"; GPU: "masked", "pallas").
- ``encoder``: the 16-layer encoder to its final hidden states on B x S ids (--batch x --seq;
  benchmarks/model_inference.py's loop), UltraFastBERT-KxD with fff_impl "auto" against crammedBERT-3072.

float32 on CPU; bfloat16 compute on GPU (float32 parameters, as in the model). On CPU the table names the
form "auto" runs (``ufbert_jax.fff.cpu_forms``). The gather forms hold [T, K, H] float32 rows per level: a
row where that exceeds GATHER_LIMIT_BYTES leaves them out (listed under "skipped" in the JSON).

Writes ``speed_map_{backend}.json`` (the rows, machine, ISA, load average, arguments), ``.md`` (the table)
and ``.png`` (speedup over the baseline against the row, one panel per part) to --out. ``--plot`` rebuilds
the table and the plot from saved JSONs, all machines in one figure: ``speed_map.md``, ``speed_map.png``.

Measured time on a 2-core Zen 4 with ``--rounds 2``: 40 minutes (docs/speed_map.md); ``--quick`` (T 1024,
1 x 128 ids, one round) 3 minutes there, most of it compiling 13 encoders.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import fff_train_layer
import jax
import jax.numpy as jnp
import layer_ops
import model_inference
import numpy as np
import timing
from flax import nnx

from ufbert_jax import config, fff, model

BASELINE = "crammedbert-3072"
ROWS = tuple(name for name in config.PAPER_PRESETS if name.startswith("ultrafastbert-"))
PARTS = ("layer", "train", "encoder")
PART_TITLES = {
    "layer": "FFF layer, inference",
    "train": "FFF layer, training (forward + backward)",
    "encoder": "encoder, inference",
}
# The forms each part times besides "auto", per platform.
FORMS = {
    "layer": {"cpu": ("masked", "cpu"), "gpu": ("masked", "pallas")},
    "train": {"cpu": ("masked", "sparse"), "gpu": ("masked", "pallas")},
    "encoder": {"cpu": (), "gpu": ()},
}
GATHER_FORMS = ("conditional", "sparse")
GATHER_LIMIT_BYTES = 2**30
# A form whose timed warm-up call is this many times slower than the baseline's is timed by that call alone
# (listed under "timed_once"): the custom call on 3072 trees of depth 0 takes about 14 s at 16384 tokens.
SLOW_FACTOR = 4.0
# Plot styles: a colour per form, a marker per machine (file given to --plot).
FORM_COLORS = {"auto": "black", "masked": "C1", "cpu": "C2", "sparse": "C3", "pallas": "C4"}
MARKERS = "os^vD"
ROTATE = 2  # layer parts: input sets cycled through, so x does not sit in a cache
HIDDEN = layer_ops.HIDDEN
WIDTH = layer_ops.DENSE_WIDTHS["dense3072"]


def parse(argv: list[str]) -> argparse.Namespace:
    names = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=names, default=list(ROWS), help="ultrafastbert-KxD presets")
    parser.add_argument("--parts", type=names, default=list(PARTS))
    parser.add_argument("--tokens", type=int, default=16384, help="T of the layer parts")
    parser.add_argument("--batch", type=int, default=32, help="B of the encoder")
    parser.add_argument("--seq", type=int, default=128, help="S of the encoder")
    parser.add_argument("--layers", type=int, default=16, help="encoder layers (16 in every paper row)")
    parser.add_argument("--rounds", type=int, default=3, help="timed loops per form (median reported)")
    parser.add_argument("--loop-s", type=float, default=0.5, help="wall time of one timed loop")
    parser.add_argument("--quick", action="store_true", help="T 1024, 1 x 128 ids, one round of one call")
    parser.add_argument("--out", default="docs/results", help="directory of the outputs")
    parser.add_argument("--plot", nargs="+", metavar="JSON", help="only rebuild table and plot from JSONs")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.batch, args.rounds, args.loop_s = 1024, 1, 1, 0.0
    for row in args.rows:
        config.preset(row)  # a bad name is a ValueError naming it
    if bad := set(args.parts) - set(PARTS):
        parser.error(f"--parts {sorted(bad)}: expected some of {PARTS}")
    return args


def trees_depth(row: str) -> tuple[int, int]:
    cfg = config.preset(row)
    return cfg.fff_trees, cfg.fff_depth


def gather_bytes(row: str, tokens: int) -> int:
    """Bytes of one level's gathered float32 rows [T, K, H] in the gather forms."""
    return tokens * trees_depth(row)[0] * HIDDEN * 4


def forms(part: str, backend: str, row: str, tokens: int) -> tuple[list[str], dict[str, str]]:
    """(forms timed, {form: why skipped}) of one row in one part.

    "auto" is timed where its pick is not known beforehand (picks() is None); elsewhere its cell is the
    time of the form it picks.
    """
    chosen = ["auto"] * (picks(part, backend, row) is None) + list(FORMS[part].get(backend, ("masked",)))
    skipped = {}
    if part != "encoder" and gather_bytes(row, tokens) > GATHER_LIMIT_BYTES:
        for form in [*chosen]:
            if form in GATHER_FORMS or (form == "auto" and picks(part, backend, row) in GATHER_FORMS):
                chosen.remove(form)
                skipped[form] = f"[T, K, H] rows of {gather_bytes(row, tokens) / 2**30:.1f} GiB per level"
    return chosen, skipped


def picks(part: str, backend: str, row: str) -> str | None:
    """The form "auto" runs for this row and part: known on CPU (fff.cpu_forms), None elsewhere."""
    if backend != "cpu" or part == "encoder":
        return None
    inference, training = fff.cpu_forms(*trees_depth(row))
    return inference if part == "layer" else training


class LayerPart:
    """Inference of one feedforward on ROTATE input sets x [T, H]."""

    def __init__(self, dtype, tokens: int, loop_s: float, rng: np.random.Generator):
        self.dtype, self.loop_s, self.rng = dtype, loop_s, rng
        self.xs = layer_ops.inputs(rng, tokens, dtype, ROTATE)

    def baseline(self) -> timing.ChainedLoop:
        params = layer_ops.dense_params(self.rng, WIDTH, self.dtype)
        return timing.ChainedLoop(layer_ops.dense_ff, self.xs, params, ROTATE, self.loop_s)

    def loops(self, row: str, names: list[str]) -> dict[str, timing.ChainedLoop]:
        params = layer_ops.fff_params(self.rng, self.dtype, *trees_depth(row))
        return {
            name: timing.ChainedLoop(
                layer_ops.fff_op(fff.resolve_impl(name)), self.xs, params, ROTATE, self.loop_s
            )
            for name in names
        }


class TrainPart:
    """Forward + backward of one feedforward (fff_train_layer.training_call) on ROTATE input sets."""

    def __init__(self, dtype, tokens: int, loop_s: float, rng: np.random.Generator):
        self.dtype, self.loop_s, self.rng = dtype, loop_s, rng
        self.xs = layer_ops.inputs(rng, tokens, dtype, ROTATE)
        self.cotangent = layer_ops.inputs(rng, tokens, dtype, 1)[0]  # [T, H]
        self.small = jnp.zeros((1,), jnp.float32)

    def _loop(self, forward, cast, weights) -> timing.ChainedLoop:
        op = fff_train_layer.training_call(forward, self.dtype, cast)
        return timing.ChainedLoop(op, self.xs, (self.small, self.cotangent, *weights), ROTATE, self.loop_s)

    def baseline(self) -> timing.ChainedLoop:
        dense, _ = fff_train_layer.weights(self.rng, HIDDEN, WIDTH, 1, 0)
        return self._loop(fff_train_layer.dense_ff, (True, True), dense)

    def loops(self, row: str, names: list[str]) -> dict[str, timing.ChainedLoop]:
        _, weights = fff_train_layer.weights(self.rng, HIDDEN, WIDTH, *trees_depth(row))
        return {name: self._loop(fff.resolve_impl(name), (True, False, True), weights) for name in names}


class EncoderPart:
    """The encoder to its final hidden states on B x S ids (model_inference.chained_loop)."""

    def __init__(self, dtype, args: argparse.Namespace, rng: np.random.Generator):
        self.dtype, self.args, self.rng = dtype, args, rng

    def _loop(self, name: str, impl: str) -> timing.ChainedLoop:
        cfg = config.preset(name, dtype=self.dtype, dropout=0.0, fff_impl=impl, layers=self.args.layers)
        graphdef, state = nnx.split(model.MaskedLM(cfg, nnx.Rngs(0)))
        a = self.args
        return model_inference.chained_loop(graphdef, state, "encoder", a.batch, a.seq, a.loop_s, self.rng)

    def baseline(self) -> timing.ChainedLoop:
        return self._loop(BASELINE, "auto")

    def loops(self, row: str, names: list[str]) -> dict[str, timing.ChainedLoop]:
        return {name: self._loop(row, name) for name in names}


def warm_sample(loop: timing.ChainedLoop):
    """loop.sample after one untimed turn: the previous form's freed buffers (over 1 GB for the masked form
    at 16384 tokens) are unmapped in the background, which stalls the next loop's page faults (the custom
    call measured 21.8 instead of about 12 ms right after the masked form; benchmarks/fff_layer_cpu.py)."""

    def sample() -> float:
        loop.run(1)
        return loop.sample()

    return sample


def measure_part(part: str, args: argparse.Namespace, backend: str, dtype: str) -> dict:
    """Every row of one part, each side by side with the part's baseline (compiled once)."""
    rng = np.random.default_rng(0)
    if part == "encoder":
        runner = EncoderPart(dtype, args, rng)
    else:
        runner = (LayerPart if part == "layer" else TrainPart)(
            jnp.dtype(dtype), args.tokens, args.loop_s, rng
        )
    baseline = runner.baseline()
    rows, baseline_samples = {}, []
    for row in args.rows:
        names, skipped = forms(part, backend, row, args.tokens)
        loops = runner.loops(row, names)
        slow = {n: loop.first_s for n, loop in loops.items() if loop.first_s > SLOW_FACTOR * baseline.first_s}
        samplers = {"baseline": warm_sample(baseline)} | {
            n: warm_sample(loop) for n, loop in loops.items() if n not in slow
        }
        samples = timing.interleaved(samplers, args.rounds) | {n: [seconds] for n, seconds in slow.items()}
        baseline_samples += samples.pop("baseline")
        ms = lambda seconds: 1e3 * statistics.median(seconds)  # noqa: E731
        times = {name: ms(samples[name]) for name in names}
        if (pick := picks(part, backend, row)) in times:
            times = {"auto": times[pick]} | times
        rows[row] = {
            "ms": times,
            "baseline_ms": ms(baseline_samples[-args.rounds :]),
            "picks": picks(part, backend, row),
            "skipped": skipped,
            "timed_once": sorted(slow),
        }
        del loops
        cells = " ".join(f"{n} {v:.2f} ms" for n, v in rows[row]["ms"].items())
        print(f"{part} {row}: baseline {rows[row]['baseline_ms']:.2f} ms, {cells}", flush=True)
    return {"baseline_ms": 1e3 * statistics.median(baseline_samples), "rows": rows}


def machine() -> dict:
    """model_inference.machine() plus the cores this process may use."""
    return model_inference.machine() | {"cores_used": len(os.sched_getaffinity(0))}


def speedups(part: dict, row: str) -> dict[str, float]:
    cells = part["rows"][row]
    return {name: cells["baseline_ms"] / ms for name, ms in cells["ms"].items()}


def where(result: dict) -> str:
    """The machine in a few words: the CPU model and ISA, or the accelerator."""
    m = result["machine"]
    return f"{m['cpu']} ({m['isa']})" if m["backend"] == "cpu" else m["device"]


def table(result: dict) -> str:
    """One markdown table: per row, each part's "auto" time and speedup, its pick and every form's speedup."""
    a = result["args"]
    sizes = {
        "layer": f"T={a['tokens']}",
        "train": f"T={a['tokens']}",
        "encoder": f"{a['batch']} x {a['seq']}",
    }
    head, rule, lines = ["row"], ["---"], []
    parts = [p for p in PARTS if p in result["parts"]]
    columns = {
        p: sorted({n for r in result["parts"][p]["rows"].values() for n in r["ms"]} - {"auto"}) for p in parts
    }
    for p in parts:
        head += [f"{p} ({sizes[p]}): auto ms", "x", "auto runs"] + [f"{p}: {n} x" for n in columns[p]]
    rule += ["---:"] * (len(head) - 1)
    baseline = [f"{BASELINE} (baseline)"]
    for p in parts:
        baseline += [f"{result['parts'][p]['baseline_ms']:.2f}", "1.00", "dense"] + ["" for _ in columns[p]]
    lines.append(baseline)
    for row in result["args"]["rows"]:
        cells = [row]
        for p in parts:
            data = result["parts"][p]["rows"][row]
            up = speedups(result["parts"][p], row)
            once = set(data.get("timed_once", ()))
            mark = lambda n, once=once: "*" if n in once else ""  # noqa: E731
            auto = data["ms"].get("auto")
            cells += [
                f"{auto:.2f}{mark('auto')}" if auto else "-",
                f"{up['auto']:.2f}{mark('auto')}" if auto else "-",
                data["picks"] or "-",
            ]
            cells += [f"{up[n]:.2f}{mark(n)}" if n in up else "-" for n in columns[p]]
        lines.append(cells)
    load = f"load average {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after"
    caption = (
        f"{where(result)}, {result['dtype']}, {result['machine'].get('cores_used', '?')} cores, {load}; "
        f"ms per call (median of {a['rounds']} rounds) and speedup x over the baseline measured in the same "
        f"rounds; * timed by one call (over {SLOW_FACTOR:g}x slower than the baseline); - not timed (the "
        "[T, K, H] rows of a gather form over GATHER_LIMIT_BYTES)."
    )
    rows = [head, rule, *lines]
    return caption + "\n\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"


def plot(results: list[dict], path: Path) -> None:
    """Speedup over the baseline against the row, one panel per part, one line per machine and form."""
    from matplotlib.figure import Figure

    parts = [p for p in PARTS if any(p in r["parts"] for r in results)]
    fig = Figure(figsize=(5.5 * len(parts), 4.8))
    axes = fig.subplots(1, len(parts), squeeze=False)[0]
    for ax, part in zip(axes, parts, strict=True):
        for i, result in enumerate(results):
            if part not in result["parts"]:
                continue
            rows = result["args"]["rows"]
            labels = [r.removeprefix("ultrafastbert-") for r in rows]
            names = sorted(
                {n for r in rows for n in result["parts"][part]["rows"][r]["ms"]}, key=lambda n: n != "auto"
            )
            for name in names:
                ups = [speedups(result["parts"][part], r).get(name, np.nan) for r in rows]
                auto = name == "auto"
                ax.plot(
                    labels,
                    ups,
                    f"{MARKERS[i % len(MARKERS)]}{'-' if auto else '--'}",
                    color=FORM_COLORS.get(name, "gray"),
                    alpha=1.0 if auto else 0.7,
                    lw=2 if auto else 1,
                    label=f"{where(result)} {result['dtype']}: {name}",
                )
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(yscale="log", xlabel="UltraFastBERT K x D")
        if part == parts[0]:
            ax.set_ylabel("speedup over the dense FF / crammedBERT-3072")
        ax.set_title(PART_TITLES[part], fontsize=10)
        ax.tick_params(axis="x", rotation=60)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def write(results: list[dict], stem: Path) -> None:
    """stem.md (every result's table) and stem.png (all in one figure)."""
    stem.with_suffix(".md").write_text("\n".join(table(r) for r in results))
    plot(results, stem.with_suffix(".png"))


def main(argv: list[str]) -> None:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot:
        results = [json.loads(Path(p).read_text()) for p in args.plot]
        write(results, out / "speed_map")
        print(f"wrote {out / 'speed_map'}.md and .png")
        return
    backend = jax.default_backend()
    dtype = "bfloat16" if backend == "gpu" else "float32"
    result = {
        "machine": machine(),
        "dtype": dtype,
        "args": {k: v for k, v in vars(args).items() if k != "plot"},
    }
    result["load_before"] = os.getloadavg()
    print(result["machine"], flush=True)
    started = time.perf_counter()
    result["parts"] = {part: measure_part(part, args, backend, dtype) for part in args.parts}
    result["load_after"], result["seconds"] = os.getloadavg(), time.perf_counter() - started
    stem = out / f"speed_map_{backend}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    write([result], stem)
    print(table(result))
    print(f"wrote {stem}.json, .md and .png ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
