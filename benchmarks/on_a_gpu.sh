#!/usr/bin/env bash
# What a session lent a GPU runs first, in one call (device time is short): builds the extension
# against the machine's torch, runs the test suite's CUDA tests (both CUDA algorithms),
# compute-sanitizer's memcheck over every CUDA kernel, the GPU benchmark, Nsight Compute's counters
# for the channels-last kernels, each op's time against cuDNN's and its floor (gpu_ops.py), then
# racecheck. On an H200 (2026-12-04, --batches 32
# --rounds 1) build, tests, memcheck, benchmark and racecheck took 46, 84, 5, 163 and 59 s.
# The benchmarks' results go to $OUT/results (default ./gpu-run/results), and every step's log into
# one archive, $OUT/logs.tar.gz, renewed after each step: few files, since the device tool brings
# back only so many (2026-12-04: a run's results were left out when its logs made too many); a
# summary line per step goes to stdout.
# GPU_RUN_SECONDS caps the whole run (a lease's device time): each step gets what is left of it,
# and the steps come in the order of what a short lease needs most (the benchmark before racecheck).
#
#     GPU_RUN_SECONDS=560 bash benchmarks/on_a_gpu.sh [arguments for bench_conv2d.py, e.g. --batches 32 --rounds 1]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-run}
logs=$(mktemp -d)
mkdir -p "$out"
python=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
# The extension is built in place, not installed: scripts outside the root import it from here.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

budget=${GPU_RUN_SECONDS:-0}  # 0: no cap

# step NAME SECONDS COMMAND...: runs COMMAND under a time limit (cut to what is left of the
# budget), logs it, prints its exit status.
step() {
  local name=$1 limit=$2 start=$SECONDS status
  shift 2
  if (( budget > 0 && budget - SECONDS < limit )); then limit=$((budget - SECONDS)); fi
  if (( limit < 10 )); then echo "== $name: not run, out of time"; return 1; fi
  timeout "$limit" "$@" > "$logs/$name.log" 2>&1
  status=$?
  echo "== $name: exit $status in $((SECONDS - start)) s"
  tail -n 4 "$logs/$name.log"
  tar czf "$out/logs.tar.gz" -C "$logs" .
  return "$status"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv 2>&1 | tee "$logs/gpu.txt"
step build 400 "$python" setup.py -q build_ext --inplace || exit 1
step tests 300 "$python" -m pytest -q -p no:cacheprovider -n 12 --timeout 120 -k "cuda and not emulated" tests/

# Each op on each CUDA algorithm, with tiles cut by the edges and the reductions split.
cat > "$logs/sanitized_calls.py" <<'EOF'
import os
import torch
import conv_ext

ops = torch.ops.conv_ext
torch.backends.cudnn.allow_tf32 = False  # float32 exact: FMAs, or 3xTF32 on the channels-last kernels
layers = [  # (n, c, k, size, kernel, stride, padding, dilation, groups), NCHW
    (2, 70, 67, (13, 11), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (3, 134, 134, (24, 23), (3, 3), (2, 1), (1, 0), (1, 2), 2),
    (2, 32, 32, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1), 32),
    (2, 32, 32, (64, 64), (3, 3), (1, 1), (1, 1), (1, 1), 32),  # weight gradient split in two
    (2, 16, 32, (65, 128), (5, 5), (2, 1), (2, 2), (1, 1), 16),
    (2, 16, 16, (67, 130), (3, 2), (1, 2), (1, 0), (2, 1), 16),
    # the channels-last kernels (auto): every tile, stride phases no tap feeds, a split weight gradient
    (2, 72, 72, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (3, 80, 48, (14, 13), (3, 2), (2, 1), (3, 2), (2, 1), 2),
    (4, 16, 24, (24, 22), (5, 5), (1, 1), (4, 1), (2, 1), 1),
    (32, 64, 64, (28, 28), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 3, 64, (31, 29), (7, 7), (2, 2), (3, 3), (1, 1), 1),  # 3 channels padded; input gradient by columns
]
channels_last_layers = [
    (2, 40, 40, (17, 15), (3, 3), (1, 1), (1, 1), (1, 1), 40),  # depthwise, 32 channels a block
]
for algorithm in ("auto", "gemm", "direct"):  # auto: the depthwise kernels for the depthwise layers
    os.environ["CONV_EXT_CUDA_ALGORITHM"] = algorithm
    for dtype in (torch.float32, torch.bfloat16):
        for (n, c, k, size, kernel, stride, padding, dilation, groups), layout in (
            [(layer, torch.contiguous_format) for layer in layers]
            + [(layer, torch.channels_last) for layer in channels_last_layers]
        ):
            x = torch.randn(n, c, *size, device="cuda", dtype=dtype).contiguous(memory_format=layout)
            w = torch.randn(k, c // groups, *kernel, device="cuda", dtype=dtype)
            b = torch.randn(k, device="cuda", dtype=dtype)
            args = (list(stride), list(padding), list(dilation), groups)
            y = ops.conv2d(x, w, b, *args)
            ops.conv2d_grad_input(y, w, list(size), *args)
            ops.conv2d_grad_weight(x, y, list(kernel), *args)
torch.cuda.synchronize()
print("done")
EOF
sanitizer=(compute-sanitizer --error-exitcode 1 --tool)
step memcheck 240 "${sanitizer[@]}" memcheck "$python" "$logs/sanitized_calls.py"
step bench 600 "$python" benchmarks/bench_conv2d.py --device cuda --out "$out/results" "$@"

# Where the channels-last kernels' time goes: Nsight Compute's counters for each op of a bf16
# layer, and the 3xTF32 forward (what limits them, the warps' stall reasons, shared-memory bank
# conflicts, occupancy), read on Firecracker machines only (the device library's KINDS.md).
cat > "$logs/profiled_calls.py" <<'EOF'
import torch
import conv_ext

ops = torch.ops.conv_ext
torch.backends.cudnn.allow_tf32 = False  # the float32 call: 3xTF32
args = ([1, 1], [1, 1], [1, 1], 1)
for dtype in (torch.bfloat16, torch.float32):  # ResNet-50's 3x3 256 @14 at batch 32
    x = torch.randn(32, 256, 14, 14, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    y = ops.conv2d(x, w, None, *args)
    if dtype == torch.bfloat16:
        ops.conv2d_grad_input(y, w, [14, 14], *args)
        ops.conv2d_grad_weight(x, y, [3, 3], *args)
torch.cuda.synchronize()
print("done")
EOF
ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
step ncu 120 "${ncu_bin:-ncu}" --clock-control none -k regex:channels_last_mma_kernel --launch-count 4 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section Occupancy --section LaunchStats \
  --metrics l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum \
  "$python" "$logs/profiled_calls.py"
step ops 180 "$python" benchmarks/gpu_ops.py --out "$out/results"
step racecheck 240 "${sanitizer[@]}" racecheck "$python" "$logs/sanitized_calls.py"
