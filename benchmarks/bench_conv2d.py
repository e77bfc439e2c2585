"""conv_ext against torch's own convolution (F.conv2d) on a handful of common layers.

For each layer: check our result against F.conv2d, then time forward and forward+backward of
both, interleaved round by round on the same inputs with torch.utils.benchmark; report medians,
GFLOP/s and the ratio torch-time / our-time (> 1: we are faster). Writes JSON and a PNG chart to
benchmarks/results/ and prints a Markdown table.

    python benchmarks/bench_conv2d.py [--device cpu|cuda] [--batch 8] [--rounds 5]
"""
import argparse
import json
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

import conv_ext

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Layer:
    name: str
    in_channels: int
    out_channels: int
    size: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    def flops(self, batch):
        out = (self.size + 2 * self.padding - self.kernel) // self.stride + 1
        per_output = 2 * (self.in_channels // self.groups) * self.kernel**2
        return batch * self.out_channels * out * out * per_output


LAYERS = [
    Layer("ResNet stem 7x7/2, 3->64", 3, 64, 112, 7, 2, 3),
    Layer("ResNet 3x3, 64 ch @56", 64, 64, 56, 3, 1, 1),
    Layer("ResNet 3x3, 256 ch @14", 256, 256, 14, 3, 1, 1),
    Layer("3x3/2, 128->256 @28", 128, 256, 28, 3, 2, 1),
    Layer("1x1, 256->64 @56", 256, 64, 56, 1),
    Layer("grouped 3x3 g=32, 256 ch @28", 256, 256, 28, 3, 1, 1, 32),
    Layer("depthwise 3x3, 256 ch @28", 256, 256, 28, 3, 1, 1, 256),
]


def make_inputs(layer, batch, device, dtype):
    gen = torch.Generator().manual_seed(0)
    shape_w = (layer.out_channels, layer.in_channels // layer.groups, layer.kernel, layer.kernel)
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size, generator=gen)
    w = torch.randn(*shape_w, generator=gen) / (shape_w[1] * layer.kernel**2) ** 0.5
    b = torch.randn(layer.out_channels, generator=gen)
    return [t.to(device, dtype).requires_grad_() for t in (x, w, b)]


def relative_error(layer, x, w, b):
    """max |ours - float64 result| / max |float64 result| for the forward output."""
    kw = dict(stride=layer.stride, padding=layer.padding, groups=layer.groups)
    with torch.no_grad():
        exact = F.conv2d(x.double(), w.double(), b.double(), **kw)
        ours = conv_ext.conv2d(x, w, b, **kw).double()
    return ((ours - exact).abs().max() / exact.abs().max()).item()


def timers(layer, x, w, b):
    """{(mode, side): Timer} for forward and forward+backward of ours and torch's."""
    kw = dict(stride=layer.stride, padding=layer.padding, groups=layer.groups)
    gy = torch.randn_like(F.conv2d(x, w, b, **kw))
    out = {}
    for side, fn in (("ours", conv_ext.conv2d), ("torch", F.conv2d)):
        env = dict(fn=fn, x=x, w=w, b=b, kw=kw, gy=gy, torch=torch)
        out["forward", side] = benchmark.Timer(
            "with torch.no_grad(): fn(x, w, b, **kw)", globals=env, num_threads=torch.get_num_threads()
        )
        out["forward+backward", side] = benchmark.Timer(
            "torch.autograd.grad(fn(x, w, b, **kw), (x, w, b), gy)", globals=env,
            num_threads=torch.get_num_threads(),
        )
    return out


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(layer, batch, device, dtype, rounds, min_run_time):
    x, w, b = make_inputs(layer, batch, device, dtype)
    error = relative_error(layer, x, w, b)
    times = {key: [] for key in timers(layer, x, w, b)}
    ts = timers(layer, x, w, b)
    for _ in range(rounds):  # interleave the two sides so drifts in machine load hit both
        for key, timer in ts.items():
            sync(device)
            times[key].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    rows = []
    for mode in ("forward", "forward+backward"):
        ours = statistics.median(times[mode, "ours"])
        theirs = statistics.median(times[mode, "torch"])
        flops = layer.flops(batch) * (1 if mode == "forward" else 3)
        rows.append(dict(
            layer=layer.name, **asdict(layer), batch=batch, mode=mode, dtype=str(dtype).split(".")[-1],
            ours_ms=ours * 1e3, torch_ms=theirs * 1e3, ratio=theirs / ours,
            ours_gflops=flops / ours / 1e9, torch_gflops=flops / theirs / 1e9,
            max_rel_error=error,
        ))
    return rows


def device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def commit():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True, cwd=RESULTS.parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def geomean(values):
    return statistics.geometric_mean(values) if values else float("nan")


def markdown_table(rows):
    lines = [
        "| layer | mode | ours ms | torch ms | ours GFLOP/s | torch GFLOP/s | torch/ours | max rel. error |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['mode']} | {r['ours_ms']:.2f} | {r['torch_ms']:.2f} | "
            f"{r['ours_gflops']:.1f} | {r['torch_gflops']:.1f} | {r['ratio']:.2f}x | {r['max_rel_error']:.1e} |"
        )
    for mode in ("forward", "forward+backward"):
        ratios = [r["ratio"] for r in rows if r["mode"] == mode]
        lines.append(f"| **geometric mean** | {mode} | | | | | **{geomean(ratios):.2f}x** | |")
    return "\n".join(lines)


def chart(rows, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'conv_ext[bench]'): no chart written")
        return
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(layers) + 1.5))
    height = 0.38
    for i, mode in enumerate(("forward", "forward+backward")):
        ratios = {r["layer"]: r["ratio"] for r in rows if r["mode"] == mode}
        ys = [j + (i - 0.5) * height for j in range(len(layers))]
        ax.barh(ys, [ratios[name] for name in layers], height, label=mode)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(layers)), layers)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over F.conv2d (torch time / conv_ext time; > 1 is faster)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median taken)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--layers", default="", help="comma-separated substrings selecting layers")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    layers = [l for l in LAYERS if not args.layers or any(s in l.name for s in args.layers.split(","))]
    started = time.time()
    rows = []
    for layer in layers:
        rows += measure(layer, args.batch, args.device, dtype, args.rounds, args.min_run_time)
        print(f"  {layer.name}: " + ", ".join(f"{r['mode']} {r['ratio']:.2f}x" for r in rows[-2:]), flush=True)

    kind = args.device.split(":")[0]
    meta = dict(
        device=device_name(args.device), device_type=kind, threads=torch.get_num_threads(),
        torch=torch.__version__, commit=commit(), dtype=args.dtype, batch=args.batch,
        rounds=args.rounds, date=time.strftime("%Y-%m-%d %H:%M:%S"), seconds=round(time.time() - started),
    )
    table = markdown_table(rows)
    print(f"\n{meta['device']}, {meta['threads']} threads, torch {meta['torch']}, {args.dtype}, "
          f"batch {args.batch}, commit {meta['commit']}\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_conv2d_{kind}_{args.dtype}"
    (args.out / f"{stem}.json").write_text(json.dumps(dict(**meta, rows=rows), indent=1) + "\n")
    print(f"wrote {args.out / (stem + '.json')}")
    chart(rows, args.out / f"{stem}.png",
          f"conv_ext vs F.conv2d: {meta['device']}, {meta['threads']} threads, {args.dtype}, batch {args.batch}")


if __name__ == "__main__":
    main()
