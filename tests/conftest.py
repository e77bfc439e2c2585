import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import settings

# CI runs a fixed, reproducible sample; locally each run explores new examples.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def ieee_float32_on_gpus():
    """float32 on a GPU computed in float32, the tests' bounds, unless a test turns TF32 on:
    PyTorch lets cuDNN use TF32 by default, and conv_ext follows it."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


# The CPU algorithms, forced by environment variables the kernels read on every call. "auto"
# lets the kernels choose by shape; the tests run each path on every configuration. "gemm" and
# "direct" force the CUDA backend's algorithms of those names too (its tiled implicit GEMM
# wherever its grid fits, its direct kernels), so that the tests on a GPU run both.
CPU_PATHS = {
    "auto": {},
    "gemm": {"CONV_EXT_CPU_ALGORITHM": "gemm", "CONV_EXT_CUDA_ALGORITHM": "gemm"},
    # Without AVX2 the GEMM forward builds im2col tiles for at::bmm instead of the implicit GEMM.
    "gemm-generic-isa": {"CONV_EXT_CPU_ALGORITHM": "gemm", "CONV_EXT_CPU_ISA": "generic"},
    "direct": {"CONV_EXT_CPU_ALGORITHM": "direct", "CONV_EXT_CUDA_ALGORITHM": "direct"},
    "direct-generic-isa": {"CONV_EXT_CPU_ALGORITHM": "direct", "CONV_EXT_CPU_ISA": "generic"},
    # Winograd where it applies (3x3 or 5x5, or along one dimension 1 x R and R x 1 for R 3, 5 and 7;
    # stride 1, dilation 1, one group), the choice by shape elsewhere.
    "winograd": {"CONV_EXT_CPU_ALGORITHM": "winograd"},
    "winograd-generic-isa": {"CONV_EXT_CPU_ALGORITHM": "winograd", "CONV_EXT_CPU_ISA": "generic"},
    # The paths chosen where torch's BLAS runs narrower kernels than ours (slow: AMD CPUs with
    # AVX-512; cpu_features.h, blas_keeps_up) and where it keeps up (fast: Intel's), on any CPU, in
    # its widest build; by shape, or the GEMM or Winograd forced.
    **{
        "-".join(filter(None, (algorithm, blas, "blas"))):
            {"CONV_EXT_CPU_BLAS": blas, "CONV_EXT_CPU_ISA": "avx512", **({"CONV_EXT_CPU_ALGORITHM": algorithm} if algorithm else {})}
        for blas in ("slow", "fast") for algorithm in (None, "gemm", "winograd")
    },
    # bfloat16 on the pair kernels (bf16_pairs_conv2d.h): AMX's tiles where the CPU has them,
    # AVX512_BF16's vectors wherever they apply (even where Winograd is chosen for them).
    "bf16-tiles": {},
    "bf16-vectors": {"CONV_EXT_CPU_BF16": "vectors", "CONV_EXT_CPU_ISA": "avx512"},
    # The choice by shape in the AVX-512 build (the default wherever the CPU has AVX-512), forced.
    "auto-avx512-isa": {"CONV_EXT_CPU_ISA": "avx512"},
    # The choice by shape in the AVX2 build (at most), where MKL keeps up with it (blas_keeps_up).
    "auto-avx2-isa": {"CONV_EXT_CPU_ISA": "avx2"},
    # On a CPU with AVX-512 the kernels have an AVX2 and an AVX-512 build, and which one runs by
    # default depends on the CPU (cpu_features.h): these run each.
    **{
        f"{path}-{isa}-isa": {"CONV_EXT_CPU_ALGORITHM": path, "CONV_EXT_CPU_ISA": isa}
        for path in ("gemm", "direct", "winograd") for isa in ("avx2", "avx512")
    },
}
FORCED_CPU_PATHS = [
    "gemm", "direct", "winograd", "gemm-generic-isa", "direct-generic-isa", "winograd-generic-isa",
]
if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
    FORCED_CPU_PATHS += [f"{path}-{isa}-isa" for isa in ("avx2", "avx512") for path in ("gemm", "direct", "winograd")]


@contextmanager
def num_threads(n):
    """torch's intra-op threads set to n inside the block, restored after it."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def cpu_path(name):
    saved = {key: os.environ.get(key) for key in (
        "CONV_EXT_CPU_ALGORITHM", "CONV_EXT_CPU_ISA", "CONV_EXT_CPU_BLAS", "CONV_EXT_CPU_BF16", "CONV_EXT_CUDA_ALGORITHM",
    )}
    for key in saved:
        os.environ.pop(key, None)
    os.environ.update(CPU_PATHS[name])
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
