#!/usr/bin/env bash
# One device call that records every GPU number in docs/: the FFF layer benchmark (bf16 with the kernel
# sweep, fp32 at 16384 tokens), the pretraining throughput, and the Pallas kernel's GPU test suite.
# Run from the repository root on the GPU machine; results go under $OUT. Each stage has its own time cap so
# that one slow stage cannot eat the others' time.
set -uo pipefail
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
mkdir -p "$OUT/bf16" "$OUT/fp32"
timeout 300 python3 benchmarks/fff_layer_gpu.py --sweep --dtypes bfloat16 --out "$OUT/bf16" 2>&1 | tee "$OUT/fff_bf16.log"
timeout 120 python3 benchmarks/train_throughput.py --json "$OUT/train_throughput.json" 2>&1 | tee "$OUT/train.log"
timeout 70 python3 benchmarks/fff_layer_gpu.py --dtypes float32 --tokens 2048 16384 --out "$OUT/fp32" 2>&1 | tee "$OUT/fff_fp32.log"
timeout 90 python3 -m pytest tests/test_fff_pallas.py -k TestFffPallasGpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
