#!/usr/bin/env bash
# The device calls that record the GPU numbers in docs/gpu_kernel.md: the routed kernel's sweep (bf16,
# 16384 and 65536 tokens), the FFF layer table (bf16 and fp32, 1 to 65536 tokens), the kernel times by
# Nsight Compute (benchmarks/profile_gpu.py) and the Pallas kernels' GPU test suite. Reproduces the GPU
# tables of docs/gpu_kernel.md (their raw data: docs/results/).
#
#     OUT=/path/to/results bash reproduce/gpu_session.sh
#
# Run from the repository root on the GPU machine with `.whl` carried (reproduce/gpu_env.sh installs the repo
# and those wheels); results go under $OUT (on our device machine, the folder whose files come back).
# Machine-specific: each stage has its own time cap (300, 200, 240 s) so that one slow stage cannot eat the
# others' time within our device command's 10 minutes (Triton compiles take 10-30 s per shape; the whole
# script needs more than one 10-minute call: run the stages in separate calls if needed). The pretraining
# throughput of docs/pretraining.md: python3 benchmarks/train_throughput.py.
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
source reproduce/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
mkdir -p "$OUT/sweep" "$OUT/bf16" "$OUT/fp32"
timeout 300 python3 benchmarks/fff_layer_gpu.py --sweep --dtypes bfloat16 --tokens 16384 65536 --out "$OUT/sweep" 2>&1 | tee "$OUT/sweep.log"
timeout 300 python3 benchmarks/fff_layer_gpu.py --dtypes bfloat16 --out "$OUT/bf16" 2>&1 | tee "$OUT/fff_bf16.log"
timeout 300 python3 benchmarks/fff_layer_gpu.py --dtypes float32 --out "$OUT/fp32" 2>&1 | tee "$OUT/fff_fp32.log"
timeout 200 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
    python3 benchmarks/profile_gpu.py --impls routed dense3072 > "$OUT/kernel_times.csv"
timeout 240 python3 -m pytest tests/test_fff_pallas.py -k "TestFffPallasGpu or gelu" -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
