"""conv_ext against torch's own convolution (F.conv2d) over a fixed suite of common layers.

The suite: ResNet-18/50 layers (the 7x7/2 stem, 3x3 at 56, 28, 14 and 7 with 64-512 channels, a
3x3 stride 2, 1x1 reductions and expansions), ResNeXt's grouped 3x3 (8 and 32 channels per group,
and 16 at stride 2), MobileNet's depthwise 3x3 and a 5x5 layer, at batch 8 and 1, in float32; and a few of them in float64 and bfloat16. On a GPU
(--device cuda): ResNet-50 layers and MobileNet depthwise layers at batch 32 and 256, in float32
(TF32 off on both sides), TF32, bfloat16 and float16; both sides run on the same channels_last
tensors, torch's as cuDNN with benchmark mode on (the fair anchor), and its NCHW forward times
with benchmark mode off and on are recorded too.

For each row: the error of both sides' forward against a float64 result (max |error| / max |exact|),
the peak memory one forward call allocates, then forward and forward+backward of both sides timed
with torch.utils.benchmark, interleaved round by round on the same inputs; medians, GFLOP/s and
the ratio torch-time / our-time (> 1: we are faster), the median of the rounds' ratios: each
round times both sides of a mode back to back, in turns (ours first, then torch first), so a
shared machine's changes of speed between rounds cancel out of it. On the CPU the rounds run in 3
fresh processes (one round each, by default), so that no one process, nor the minutes it ran in,
decides the figures. Writes JSON and a PNG chart to benchmarks/results/, prints a Markdown table
and, with --readme, puts it into README.md.

    python benchmarks/bench_conv2d.py [--device cpu|cuda] [--batches 8,1] [--processes 3] [--rounds 1] [--readme]
    python benchmarks/bench_conv2d.py --device cuda [--precisions float32,tf32,bfloat16,float16]

The script runs itself with glibc's malloc thresholds fixed (see STEADY_HEAP): otherwise whether a
call that allocates a large output pays page faults depends on the heap's history in the process,
and torch's own stem measured anywhere from 20 to 48 ms on one machine.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from torch.nn.modules.utils import _pair

import conv_ext

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Layer:
    """A layer on square images: kernel and padding an int or (height, width); its input
    channels_last where asked (a model converted to channels_last; on a GPU every layer's is)."""
    name: str
    in_channels: int
    out_channels: int
    size: int
    kernel: int | tuple[int, int]
    stride: int = 1
    padding: int | tuple[int, int] = 0
    groups: int = 1
    dilation: int = 1
    channels_last: bool = False

    def kwargs(self):
        return dict(stride=self.stride, padding=_pair(self.padding), dilation=self.dilation, groups=self.groups)

    def flops(self, batch):
        kernel = _pair(self.kernel)
        out_h, out_w = ((self.size + 2 * p - self.dilation * (k - 1) - 1) // self.stride + 1
                        for k, p in zip(kernel, _pair(self.padding)))
        per_output = 2 * (self.in_channels // self.groups) * kernel[0] * kernel[1]
        return batch * self.out_channels * out_h * out_w * per_output


LAYERS = [
    Layer("ResNet stem 7x7/2, 3->64 @224", 3, 64, 224, 7, 2, 3),
    Layer("3x3, 64 ch @56", 64, 64, 56, 3, 1, 1),
    Layer("3x3, 128 ch @28", 128, 128, 28, 3, 1, 1),
    Layer("3x3, 256 ch @14", 256, 256, 14, 3, 1, 1),
    Layer("3x3, 512 ch @7", 512, 512, 7, 3, 1, 1),
    Layer("3x3/2, 128->256 @28", 128, 256, 28, 3, 2, 1),
    Layer("1x1, 256->64 @56", 256, 64, 56, 1),
    Layer("1x1, 64->256 @56", 64, 256, 56, 1),
    Layer("1x1, 1024->256 @14", 1024, 256, 14, 1),
    Layer("grouped 3x3 g=32, 256 ch @28", 256, 256, 28, 3, 1, 1, 32),
    Layer("grouped 3x3 g=32, 1024 ch @7", 1024, 1024, 7, 3, 1, 1, 32),
    Layer("grouped 3x3/2 g=32, 512 ch @28", 512, 512, 28, 3, 2, 1, 32),
    Layer("depthwise 3x3, 256 ch @28", 256, 256, 28, 3, 1, 1, 256),
    Layer("5x5, 48->64 @28", 48, 64, 28, 5, 1, 2),
]
# The layers also measured in float64 and bfloat16 (batch 8).
OTHER_DTYPE_LAYERS = ["3x3, 64 ch @56", "3x3, 256 ch @14", "1x1, 256->64 @56", "depthwise 3x3, 256 ch @28"]

# On a GPU: ResNet-50's distinct layer kinds (torchvision, 224x224 input) and MobileNet's depthwise.
GPU_LAYERS = [
    Layer("ResNet-50 stem 7x7/2, 3->64 @224", 3, 64, 224, 7, 2, 3),
    Layer("ResNet-50 1x1, 64->64 @56", 64, 64, 56, 1),
    Layer("ResNet-50 3x3, 64 ch @56", 64, 64, 56, 3, 1, 1),
    Layer("ResNet-50 1x1, 64->256 @56", 64, 256, 56, 1),
    Layer("ResNet-50 3x3/2, 128 ch @56", 128, 128, 56, 3, 2, 1),
    Layer("ResNet-50 3x3, 128 ch @28", 128, 128, 28, 3, 1, 1),
    Layer("ResNet-50 3x3, 256 ch @14", 256, 256, 14, 3, 1, 1),
    Layer("ResNet-50 1x1, 1024->256 @14", 1024, 256, 14, 1),
    Layer("ResNet-50 3x3, 512 ch @7", 512, 512, 7, 3, 1, 1),
    Layer("ResNet-50 1x1, 512->2048 @7", 512, 2048, 7, 1),
    Layer("depthwise 3x3, 256 ch @28", 256, 256, 28, 3, 1, 1, 256),
    Layer("depthwise 3x3/2, 512 ch @14", 512, 512, 14, 3, 2, 1, 512),
]

# Beyond the suite (--suite beyond): Inception-v3's factorised 1x7, 7x1 and 1x3 kernels, DeepLab's
# dilated 3x3, a dense 7x7, EfficientNet's depthwise 5x5, ConvNeXt's depthwise 7x7, MobileNetV2's
# strided depthwise 3x3, ResNet-50's strided 1x1 projection, ResNeXt-50's grouped 3x3 of 16
# channels per group and a squeeze-and-excitation 1x1 on pooled images (EfficientNet's); and
# layers of a model in channels_last (MobileNet's depthwise 3x3, ResNet's 3x3 and 1x1, ResNeXt's
# grouped 3x3 of 4, 8 and 16 channels per group).
BEYOND_LAYERS = [
    Layer("Inception 1x7, 128 ch @17", 128, 128, 17, (1, 7), 1, (0, 3)),
    Layer("Inception 7x1, 192 ch @17", 192, 192, 17, (7, 1), 1, (3, 0)),
    Layer("Inception 1x3, 384 ch @8", 384, 384, 8, (1, 3), 1, (0, 1)),
    Layer("3x3 dilated 2, 256 ch @28", 256, 256, 28, 3, 1, 2, dilation=2),
    Layer("3x3 dilated 4, 512 ch @14", 512, 512, 14, 3, 1, 4, dilation=4),
    Layer("7x7, 64 ch @28", 64, 64, 28, 7, 1, 3),
    Layer("depthwise 5x5, 240 ch @28", 240, 240, 28, 5, 1, 2, 240),
    Layer("depthwise 7x7, 384 ch @14", 384, 384, 14, 7, 1, 3, 384),
    Layer("depthwise 3x3/2, 144 ch @56", 144, 144, 56, 3, 2, 1, 144),
    Layer("1x1/2, 256->512 @56", 256, 512, 56, 1, 2),
    Layer("grouped 3x3 g=32, 512 ch @14", 512, 512, 14, 3, 1, 1, 32),
    Layer("squeeze-excitation 1x1, 960->240 @1", 960, 240, 1, 1),
    Layer("channels_last depthwise 3x3, 256 ch @28", 256, 256, 28, 3, 1, 1, 256, channels_last=True),
    Layer("channels_last depthwise 3x3/2, 144 ch @56", 144, 144, 56, 3, 2, 1, 144, channels_last=True),
    Layer("channels_last 3x3, 128 ch @28", 128, 128, 28, 3, 1, 1, channels_last=True),
    Layer("channels_last 1x1, 256->64 @56", 256, 64, 56, 1, channels_last=True),
    Layer("channels_last grouped 3x3 g=32, 128 ch @56", 128, 128, 56, 3, 1, 1, 32, channels_last=True),
    Layer("channels_last grouped 3x3 g=32, 256 ch @28", 256, 256, 28, 3, 1, 1, 32, channels_last=True),
    Layer("channels_last grouped 3x3 g=32, 512 ch @14", 512, 512, 14, 3, 1, 1, 32, channels_last=True),
]

# Precision names: a dtype, or "tf32" (float32 tensors, TF32 allowed on both sides).
DTYPES = dict(float32=torch.float32, tf32=torch.float32, float64=torch.float64,
              bfloat16=torch.bfloat16, float16=torch.float16)


def allow_tf32(enabled):
    """TF32 in cuDNN convolutions (which our CUDA kernels are to mirror) and in matmuls."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def make_inputs(layer, batch, device, dtype):
    gen = torch.Generator().manual_seed(0)
    shape_w = (layer.out_channels, layer.in_channels // layer.groups, *_pair(layer.kernel))
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size, generator=gen)
    w = torch.randn(*shape_w, generator=gen) / (shape_w[1] * shape_w[2] * shape_w[3]) ** 0.5
    b = torch.randn(layer.out_channels, generator=gen)
    if layer.channels_last:
        x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
    return [t.to(device, dtype).requires_grad_() for t in (x, w, b)]


def relative_errors(layer, x, w, b):
    """max |result - float64 result| / max |float64 result| of both sides' forward."""
    kw = layer.kwargs()
    with torch.no_grad():
        exact = F.conv2d(x.double(), w.double(), b.double(), **kw)
        scale = exact.abs().max()
        return [((fn(x, w, b, **kw).double() - exact).abs().max() / scale).item()
                for fn in (conv_ext.conv2d, F.conv2d)]


def peak_memory_mib(fn, layer, x, w, b):
    """Peak memory allocated while one forward call runs (its output included): on a GPU from the
    caching allocator's statistics, on the CPU as the profiler's memory timeline counts it; None
    where the profiler cannot say."""
    kw = layer.kwargs()
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad():
            fn(x, w, b, **kw)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    activities = [torch.profiler.ProfilerActivity.CPU]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.profiler.profile(activities=activities, profile_memory=True,
                                        record_shapes=True, with_stack=True) as prof:
                with torch.no_grad():
                    fn(x, w, b, **kw)
            path = RESULTS / ".memory_timeline.json"
            prof.export_memory_timeline(str(path), device=str(x.device))
        _, sizes = json.loads(path.read_text())
        path.unlink()
        return max((sum(row) for row in sizes), default=0) / 2**20
    except Exception:  # the memory timeline is a profiler feature that may change
        return None


def timers(layer, x, w, b):
    """{(mode, side): Timer}: forward and forward+backward of ours and of torch's. On a GPU both
    sides run on the same channels_last tensors, torch's as cuDNN in benchmark mode (the fair
    anchor), and torch's forward of NCHW tensors is timed too, with benchmark mode off and on."""
    kw = layer.kwargs()
    gy = torch.randn_like(F.conv2d(x, w, b, **kw))
    sides = [("ours", conv_ext.conv2d, x, w, gy, False), ("torch", F.conv2d, x, w, gy, False)]
    if x.is_cuda:
        x_cl, w_cl, gy_cl = (t.detach().contiguous(memory_format=torch.channels_last) for t in (x, w, gy))
        x_cl.requires_grad_()
        w_cl.requires_grad_()
        sides = [("ours", conv_ext.conv2d, x_cl, w_cl, gy_cl, False), ("torch", F.conv2d, x_cl, w_cl, gy_cl, True),
                 ("torch NCHW", F.conv2d, x, w, gy, False), ("torch NCHW benchmark", F.conv2d, x, w, gy, True)]
    out = {}
    for side, fn, xs, ws, gys, cudnn_benchmark in sides:
        env = dict(fn=fn, x=xs, w=ws, b=b, kw=kw, gy=gys, torch=torch)
        # Each timer sets its cuDNN mode, then calls once, so that autotuning is not timed.
        setup = f"torch.backends.cudnn.benchmark = {cudnn_benchmark}\nwith torch.no_grad(): fn(x, w, b, **kw)"
        out["forward", side] = benchmark.Timer(
            "with torch.no_grad(): fn(x, w, b, **kw)", setup=setup, globals=env,
            num_threads=torch.get_num_threads(),
        )
        if not side.startswith("torch NCHW"):
            out["forward+backward", side] = benchmark.Timer(
                "torch.autograd.grad(fn(x, w, b, **kw), (x, w, b), gy)", setup=setup, globals=env,
                num_threads=torch.get_num_threads(),
            )
    return out


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(layer, batch, device, precision, rounds, min_run_time, first_round=0):
    allow_tf32(precision == "tf32")
    x, w, b = make_inputs(layer, batch, device, DTYPES[precision])
    ours_error, torch_error = relative_errors(layer, x, w, b)
    memory = [peak_memory_mib(fn, layer, x, w, b) for fn in (conv_ext.conv2d, F.conv2d)]
    ts = timers(layer, x, w, b)
    times = {key: [] for key in ts}
    modes = list(dict.fromkeys(mode for mode, _ in ts))
    for round_ in range(first_round, first_round + rounds):
        # Each mode's sides back to back, which of them goes first alternating from round to round:
        # a drift in a shared machine's speed then hits both sides of a ratio alike.
        for mode in modes:
            keys = [key for key in ts if key[0] == mode]
            for key in keys[::-1] if round_ % 2 else keys:
                sync(device)
                times[key].append(ts[key].blocked_autorange(min_run_time=min_run_time).median)
    allow_tf32(False)
    rows = []
    for mode in ("forward", "forward+backward"):
        rows.append(with_medians(dict(
            layer=layer.name, **asdict(layer), batch=batch, mode=mode, dtype=precision,
            ours_error=ours_error, torch_error=torch_error,
            ours_peak_mib=memory[0], torch_peak_mib=memory[1],
            **{f"{side.replace(' ', '_')}_all_ms": [t * 1e3 for t in v] for (m, side), v in times.items() if m == mode},
        )))
    return rows


def with_medians(row):
    """The row with its medians from its rounds' times (ours_all_ms, torch_all_ms and, on a GPU,
    torch_NCHW*_all_ms): ours_ms, torch_ms, GFLOP/s and the ratio torch/ours, the median of the
    rounds' ratios."""
    layer = Layer(**{f: row[f] for f in Layer.__dataclass_fields__})
    flops = layer.flops(row["batch"]) * (1 if row["mode"] == "forward" else 3)
    for key in [k for k in row if k.endswith("_all_ms")]:
        row[key[: -len("_all_ms")] + "_ms"] = statistics.median(row[key])
    ours, theirs = row["ours_all_ms"], row["torch_all_ms"]
    row["ratio"] = statistics.median(t / o for o, t in zip(ours, theirs))
    row["ours_gflops"], row["torch_gflops"] = (flops / (row[k] * 1e-3) / 1e9 for k in ("ours_ms", "torch_ms"))
    return row


def rows_of_processes(args):
    """The suite's rows from args.processes runs of this script, each in a fresh process with
    args.rounds rounds, their rounds' times pooled, so that they spread over processes and time:
    on a shared VM one of ours has run a layer 1.6x slower throughout than the next (Zen 4,
    3x3/2 128->256 @28 at batch 1, torch's side alike; whole minutes of the VM were slow for
    every process, not one process's addresses or heap), which medians over the rounds of one
    process cannot tell from the layer's speed."""
    child = [a for a in sys.argv[1:] if a != "--readme"]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = Path(tmp) / str(i)
            print(f"process {i + 1} of {args.processes}", flush=True)
            subprocess.run([sys.executable, __file__, *child, "--processes", "1", "--rounds", str(args.rounds),
                            "--first-round", str(i * args.rounds), "--out", str(out), "--rows-only"], check=True)
            runs.append(json.loads((out / f"bench_conv2d_{suite_kind(args.device.split(':')[0], args.suite)}.json").read_text())["rows"])
    rows = runs[0]
    for other in runs[1:]:
        for row, more in zip(rows, other):
            for key in [k for k in row if k.endswith("_all_ms")]:
                row[key] += more[key]
    return [with_medians(row) for row in rows]


def suite_kind(kind, suite):
    """A run's device kind and suite as its JSON and chart (bench_conv2d_<this>) and its README
    section name them: cpu, or cpu_beyond for the layers beyond the suite."""
    return kind + ("" if suite == "default" else f"_{suite}")


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


def row_label(r):
    return f"{r['layer']}, {r['dtype']}, batch {r['batch']}"


def summary(rows):
    """Geometric mean and minimum of the ratio per (dtype, batch, mode)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["dtype"], r["batch"], r["mode"]), []).append(r["ratio"])
    return [dict(dtype=d, batch=n, mode=m, geomean=geomean(v), min=min(v), layers=len(v))
            for (d, n, m), v in groups.items()]


def markdown_table(rows):
    def mib(v):
        return "" if v is None else f"{v:.0f}"

    lines = [
        "| layer | precision | batch | mode | ours ms | torch ms | ours GFLOP/s | torch GFLOP/s | torch/ours "
        "| error ours | error torch | peak MiB ours / torch |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['dtype']} | {r['batch']} | {r['mode']} | {r['ours_ms']:.2f} | "
            f"{r['torch_ms']:.2f} | {r['ours_gflops']:.1f} | {r['torch_gflops']:.1f} | {r['ratio']:.2f}x | "
            f"{r['ours_error']:.1e} | {r['torch_error']:.1e} | "
            f"{mib(r['ours_peak_mib'])} / {mib(r['torch_peak_mib'])} |"
        )
    lines += ["", "| precision | batch | mode | layers | geometric mean torch/ours | lowest |",
              "|---|---:|---|---:|---:|---:|"]
    for s in summary(rows):
        lines.append(f"| {s['dtype']} | {s['batch']} | {s['mode']} | {s['layers']} | "
                     f"**{s['geomean']:.2f}x** | {s['min']:.2f}x |")
    return "\n".join(lines)


def chart(rows, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'conv_ext[bench]'): no chart written")
        return
    labels = list(dict.fromkeys(row_label(r) for r in rows))
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(labels) + 1.5))
    height = 0.4
    for i, mode in enumerate(("forward", "forward+backward")):
        ratios = {row_label(r): r["ratio"] for r in rows if r["mode"] == mode}
        ys = [j + (i - 0.5) * height for j in range(len(labels))]
        ax.barh(ys, [ratios[label] for label in labels], height, label=mode)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over F.conv2d (torch time / conv_ext time; > 1 is faster)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def update_readme(kind, text):
    """Replace the README section between <!-- bench:KIND --> and <!-- /bench:KIND -->."""
    readme = RESULTS.parent.parent / "README.md"
    begin, end = f"<!-- bench:{kind} -->", f"<!-- /bench:{kind} -->"
    content = readme.read_text()
    if begin not in content or end not in content:
        print(f"README.md has no {begin} section: not updated")
        return
    head, rest = content.split(begin, 1)
    readme.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")
    print(f"updated {readme}")


def suite(args):
    """(layer, batch, precision) to measure. CPU: every layer and batch in float32, a few layers in
    the other precisions at the first batch size. GPU: every layer, batch and precision."""
    gpu = args.device.startswith("cuda")
    layers = BEYOND_LAYERS if args.suite == "beyond" else GPU_LAYERS if gpu else LAYERS
    chosen = [l for l in layers if not args.layers or any(s in l.name for s in args.layers.split(","))]
    batches = [int(b) for b in (args.batches or ("32,256" if gpu else "8,1")).split(",")]
    default = "float32,tf32,bfloat16,float16" if gpu else "float32,float64,bfloat16"
    runs = []
    for precision in (args.precisions or default).split(","):
        if precision not in DTYPES:
            raise SystemExit(f"unknown precision {precision!r}: choose from {', '.join(DTYPES)}")
        if gpu or precision == "float32":
            runs += [(layer, batch, precision) for batch in batches for layer in chosen]
        else:
            runs += [(layer, batches[0], precision) for layer in chosen if layer.name in OTHER_DTYPE_LAYERS]
    return runs


# Blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, and freed memory stays
# in it: both sides then run on already-mapped memory, as in a steady training loop.
STEADY_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def main():
    if any(os.environ.get(name) != value for name, value in STEADY_HEAP.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_HEAP})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="",
                        help=f"comma-separated, from {', '.join(DTYPES)} (default: on the CPU float32 for the "
                             "whole suite, float64 and bfloat16 for a few layers; on a GPU float32, tf32, "
                             "bfloat16 and float16)")
    parser.add_argument("--batches", default="", help="default: 8,1 on the CPU, 32,256 on a GPU")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved timing rounds per process (median taken; default: 1 with several "
                             "processes, else 3)")
    parser.add_argument("--processes", type=int, default=None,
                        help="fresh processes to run the rounds in, their times pooled (default: 3 on the CPU, "
                             "1 on a GPU)")
    parser.add_argument("--first-round", type=int, default=0, help=argparse.SUPPRESS)  # of a child process
    parser.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)  # a child: JSON only
    parser.add_argument("--min-run-time", type=float, default=0.15, help="seconds per measurement")
    parser.add_argument("--suite", choices=["default", "beyond"], default="default",
                        help="beyond: layers outside the issue's suite (BEYOND_LAYERS), written apart")
    parser.add_argument("--layers", default="", help="comma-separated substrings selecting layers")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--readme", action="store_true", help="put the table into README.md")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="measure nothing: print the table of a saved result, write its chart beside it "
                             "and, with --readme, put the table into README.md (for a GPU run whose chart "
                             "did not come back)")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        return report(saved, saved["rows"], args.render.with_suffix(""), args.readme)

    if args.processes is None:
        args.processes = 1 if args.device.startswith("cuda") else 3
    if args.rounds is None:
        args.rounds = 3 if args.processes == 1 else 1

    started = time.time()
    rows = []
    if args.processes > 1:
        rows = rows_of_processes(args)
    else:
        for layer, batch, precision in suite(args):
            rows += measure(layer, batch, args.device, precision, args.rounds, args.min_run_time, args.first_round)
            print(f"  {row_label(rows[-1])}: " + ", ".join(f"{r['mode']} {r['ratio']:.2f}x" for r in rows[-2:]),
                  flush=True)

    kind = args.device.split(":")[0]
    meta = dict(
        device=device_name(args.device), device_type=kind, threads=torch.get_num_threads(), malloc=STEADY_HEAP,
        suite=args.suite, torch=torch.__version__, commit=commit(), processes=args.processes, rounds=args.rounds,
        min_run_time=args.min_run_time, date=time.strftime("%Y-%m-%d %H:%M:%S"), seconds=round(time.time() - started),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_conv2d_{suite_kind(kind, args.suite)}"
    (args.out / f"{stem}.json").write_text(
        json.dumps(dict(**meta, summary=summary(rows), rows=rows), indent=1) + "\n")
    print(f"wrote {args.out / (stem + '.json')}")
    if not args.rows_only:
        report(meta, rows, args.out / stem, args.readme)


def report(meta, rows, stem, readme):
    """Prints the Markdown table, writes the chart (stem.png) and, if asked, puts the table into
    README.md."""
    rounds = meta["processes"] * meta["rounds"]
    where = f" in {meta['processes']} processes" if meta["processes"] > 1 else ""
    heading = (f"{meta['device']}, {meta['threads']} threads, torch {meta['torch']}, commit {meta['commit']}, "
               f"{meta['date']}; medians of {rounds} interleaved rounds{where} (torch/ours: the median of the rounds' ratios)")
    table = markdown_table(rows)
    print(f"\n{heading}\n\n{table}")
    chart(rows, stem.with_suffix(".png"), f"conv_ext vs F.conv2d: {meta['device']}, {meta['threads']} threads")
    if readme:
        update_readme(suite_kind(meta["device_type"], meta.get("suite", "default")), f"{heading}:\n\n{table}")


if __name__ == "__main__":
    main()
