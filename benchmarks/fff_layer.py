"""FFF layer benchmark: conditional kernels vs XLA's dense feedforward, UltraFastBERT-1x11 shapes.

    python benchmarks/fff_layer.py cpu [options]   # XLA CPU custom call (benchmarks/fff_layer_cpu.py)
    python benchmarks/fff_layer.py gpu [options]   # Pallas GPU kernel (benchmarks/fff_layer_gpu.py)

Each part prints a table of medians and ratios measured side by side in one run, and saves a plot of the
speedup over the dense 3072-wide feedforward against the number of tokens. `--help` after the platform
lists its options.
"""

import sys

import fff_layer_cpu
import fff_layer_gpu

PARTS = {"cpu": fff_layer_cpu, "gpu": fff_layer_gpu}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in PARTS:
        sys.exit(f"usage: fff_layer.py {{{'|'.join(PARTS)}}} [options]; got {argv[:1]}")
    PARTS[argv[0]].main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
