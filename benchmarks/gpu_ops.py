"""Where the GPU time goes: each op (forward, input gradient, weight gradient) of conv_ext and of
cuDNN timed alone on bench_conv2d.py's GPU layers, against the op's floor on this GPU.

The floor is the larger of two times (METHOD.md of the device notes): the op's multiply-adds at
the rate a large matrix product of the precision runs here (torch.matmul, 8192^3), and the bytes
it must move at least (each operand read once, the result written once) at the rate a large
device-to-device copy runs. Both ceilings are measured first, on random data. Both sides run on
channels_last tensors, cuDNN in benchmark mode, as in bench_conv2d.py; its gradients are
aten.convolution_backward with one output asked for. Medians of torch.utils.benchmark's
blocked_autorange, each op's two sides timed back to back. Writes
benchmarks/results/gpu_ops_cuda.json and prints a Markdown table.

    python benchmarks/gpu_ops.py [--precisions float32,tf32,bfloat16,float16] [--batch 32] [--layers substr,...]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

from bench_conv2d import DTYPES, GPU_LAYERS, RESULTS, allow_tf32, commit, make_inputs

OPS = ("forward", "grad_input", "grad_weight")


def seconds(fn, min_run_time):
    torch.cuda.synchronize()
    return benchmark.Timer("fn()", globals=dict(fn=fn)).blocked_autorange(min_run_time=min_run_time).median


def ceilings(precisions, min_run_time):
    """(bytes/s of a device-to-device copy, {precision: multiply-adds/s of a large matrix product})."""
    src = torch.randn(2**28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * src.element_size() / seconds(lambda: dst.copy_(src), min_run_time)
    rates = {}
    for precision in precisions:
        allow_tf32(precision == "tf32")
        a, b = (torch.randn(8192, 8192, device="cuda", dtype=DTYPES[precision]) for _ in range(2))
        rates[precision] = 8192**3 / seconds(lambda: a @ b, min_run_time)
    allow_tf32(False)
    return bandwidth, rates


def op_calls(layer, x, w, b, gy):
    """{op: (ours, cuDNN's)}, each a call with no arguments."""
    args = ([layer.stride] * 2, [layer.padding] * 2, [1, 1], layer.groups)
    ops = torch.ops.conv_ext
    x_cl, w_cl, gy_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, w, gy))

    def cudnn_backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            gy_cl, x_cl, w_cl, None, *args[:3], False, [0, 0], layer.groups, mask)

    return dict(
        forward=(lambda: ops.conv2d(x_cl, w_cl, b, *args),
                 lambda: F.conv2d(x_cl, w_cl, b, layer.stride, layer.padding, 1, layer.groups)),
        grad_input=(lambda: ops.conv2d_grad_input(gy_cl, w_cl, list(x.shape[2:]), *args),
                    cudnn_backward([True, False, False])),
        grad_weight=(lambda: ops.conv2d_grad_weight(x_cl, gy_cl, list(w.shape[2:]), *args),
                     cudnn_backward([False, True, False])),
    )


def measure(layer, batch, precision, bandwidth, rate, min_run_time):
    allow_tf32(precision == "tf32")
    torch.backends.cudnn.benchmark = True
    with torch.no_grad():
        x, w, b = (t.detach() for t in make_inputs(layer, batch, "cuda", DTYPES[precision]))
        gy = torch.randn_like(F.conv2d(x, w, b, layer.stride, layer.padding, 1, layer.groups))
        calls = op_calls(layer, x, w, b, gy)
        # Each op reads two of x, w and gy and writes the third: the fewest bytes it moves.
        moved = sum(t.numel() * t.element_size() for t in (x, w, gy))
        time_math = layer.flops(batch) / 2 / rate
        rows = []
        for op in OPS:
            ours, theirs = calls[op]
            theirs()  # cuDNN's autotuning, untimed
            ours_s, theirs_s = seconds(ours, min_run_time), seconds(theirs, min_run_time)
            rows.append(dict(layer=layer.name, precision=precision, batch=batch, op=op, ours_ms=ours_s * 1e3,
                             cudnn_ms=theirs_s * 1e3, floor_ms=max(time_math, moved / bandwidth) * 1e3,
                             ratio=theirs_s / ours_s, bound="bytes" if moved / bandwidth > time_math else "math"))
    allow_tf32(False)
    torch.backends.cudnn.benchmark = False
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="float32,tf32,bfloat16,float16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", default="", help="comma-separated substrings selecting layers")
    parser.add_argument("--min-run-time", type=float, default=0.05, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    layers = [l for l in GPU_LAYERS if not args.layers or any(s in l.name for s in args.layers.split(","))]

    bandwidth, rates = ceilings(precisions, args.min_run_time)
    print(f"copy {bandwidth / 1e12:.2f} TB/s; matrix products (TFLOP/s): "
          + ", ".join(f"{p} {2 * r / 1e12:.0f}" for p, r in rates.items()), flush=True)
    rows = []
    for precision in precisions:
        for layer in layers:
            rows += measure(layer, args.batch, precision, bandwidth, rates[precision], args.min_run_time)
            print("  " + "; ".join(f"{r['layer']} {r['precision']} {r['op']} {r['ratio']:.2f}x" for r in rows[-3:]),
                  flush=True)

    lines = ["| layer | precision | op | ours ms | cuDNN ms | floor ms | ours / floor | cuDNN / ours |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['precision']} | {r['op']} | {r['ours_ms']:.3f} | {r['cudnn_ms']:.3f} | "
              f"{r['floor_ms']:.3f} ({r['bound']}) | {r['ours_ms'] / r['floor_ms']:.1f} | {r['ratio']:.2f}x |"
              for r in rows]
    lines += ["", "| precision | op | geometric mean cuDNN / ours |", "|---|---|---:|"]
    for precision in precisions:
        for op in OPS:
            ratios = [r["ratio"] for r in rows if r["precision"] == precision and r["op"] == op]
            lines.append(f"| {precision} | {op} | {statistics.geometric_mean(ratios):.2f}x |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_ops_cuda.json"
    path.write_text(json.dumps(dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, commit=commit(),
        date=time.strftime("%Y-%m-%d %H:%M:%S"), copy_bytes_per_s=bandwidth,
        matmul_multiply_adds_per_s=rates, rows=rows), indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
