"""Where a pretraining step's device time goes: the ops of one real train step, from JAX's profiler.

The step (ufbert_jax.train.steps.train_step, as benchmarks/train_throughput.py builds it) is compiled and
warmed up first; then a few steps run under ``jax.profiler.trace`` and the trace is read back with
``jax.profiler.ProfileData``: device ops grouped by name (XLA's fusion numbers dropped), ms per step and
share, and the FFF kernels' share. Runs anywhere (on CPU the host's XLA ops); on the GPU machine:
    python3 benchmarks/profile_train_step.py --model ultrafastbert-1x11:auto --out $OUT/profile
On the GPU machine after `source reproduce/gpu_env.sh` (the trainer's imports travel as wheels).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import train_throughput
from flax import nnx

from ufbert_jax.config import preset
from ufbert_jax.train import loop, optim
from ufbert_jax.train import mesh as mesh_lib
from ufbert_jax.train.steps import train_step


def trace_steps(model_name: str, batch: int, steps: int, out: Path, tiny: bool) -> Path:
    """Runs `steps` profiled train steps after warm-up; returns the .xplane.pb file written under out."""
    preset_name, _, impl = model_name.partition(":")
    preset_name = train_throughput.TINY.get(preset_name, preset_name) if tiny else preset_name
    cfg = preset(preset_name, dtype="bfloat16", fff_impl=impl or "auto")
    mesh = mesh_lib.make_mesh(1)
    model, optimizer = loop.init_state(cfg, optim.OptimizerConfig(), 0, mesh)  # the trainer's state
    step = nnx.cached_partial(train_step, model, optimizer)
    data = train_throughput.synthetic_batch(np.random.default_rng(0), batch, cfg.max_len, cfg.vocab_size)
    data, multiplier = mesh_lib.global_batch(mesh, data), jnp.float32(1.0)
    for _ in range(3):  # compile and warm up
        step(data, multiplier, apply_update=True)["loss"].block_until_ready()
    with jax.profiler.trace(str(out)):
        for _ in range(steps):
            step(data, multiplier, apply_update=True)["loss"].block_until_ready()
    return max(out.rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)


def family(name: str) -> str:
    """An op name without XLA's numeric suffixes (fusion.123, loop_add_fusion_4, ...)."""
    return re.sub(r"([._]\d+)+$", "", name)


def occupancy(line, steps: int) -> str:
    """Events per step, and the line's span (first start to last end) per step split into busy and idle.

    The steps run back to back but each waits for the last, so the span holds the host's gap between two
    steps too; the idle time inside it is what fewer, larger launches could win back.
    """
    intervals = sorted((event.start_ns, event.start_ns + event.duration_ns) for event in line.events)
    busy, reach = 0.0, intervals[0][0]
    for start, end in intervals:  # the union of the intervals: overlapping events count once
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    span = (reach - intervals[0][0]) / 1e6 / steps
    busy = busy / 1e6 / steps
    idle = span - busy
    return f"{len(intervals) / steps:.0f} events, span {span:.2f} ms = busy {busy:.2f} + idle {idle:.2f}"


def summarize(path: Path, steps: int, top: int) -> None:
    """Prints, per device plane and line, the ops by total time per step."""
    profile = jax.profiler.ProfileData.from_file(str(path))
    devices = [plane for plane in profile.planes if plane.name.startswith("/device:")]
    for plane in devices or [plane for plane in profile.planes if plane.name.startswith("/host:CPU")]:
        for line in plane.lines:
            durations, counts = collections.Counter(), collections.Counter()
            for event in line.events:
                durations[family(event.name)] += event.duration_ns / 1e6 / steps
                counts[family(event.name)] += 1
            total = sum(durations.values())
            if not total:
                continue
            fff = sum(ms for name, ms in durations.items() if "fff" in name)
            share = f"FFF kernels {fff:.2f} ms ({fff / total:.1%})"
            print(f"{plane.name} / {line.name}: {total:.2f} ms per step; {share}; {occupancy(line, steps)}")
            for name, ms in durations.most_common(top):
                print(f"{ms:>9.3f} ms {ms / total:>6.1%} {counts[name] / steps:>7.1f}x  {name[:90]}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ultrafastbert-1x11:auto", help="PRESET[:FFF_IMPL]")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="runs/profile", help="where the trace goes")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: checks the script on CPU")
    args = parser.parse_args(argv)
    path = trace_steps(args.model, args.batch, args.steps, Path(args.out), args.tiny)
    summarize(path, args.steps, args.top)


if __name__ == "__main__":
    main(sys.argv[1:])
