"""Builds conv_ext._C: the CPU kernels always, the CUDA kernels when a CUDA toolchain is usable.

CUDA is built when torch is a CUDA build and a CUDA toolkit is found (CUDA_HOME), or when
FORCE_CUDA=1. A CPU-only torch beside an installed nvcc builds the CPU extension only: the CUDA
sources need the CUDA build of torch's headers and libraries. TORCH_CUDA_ARCH_LIST picks the
GPU architectures, as for any torch extension.
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def use_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp", root_dir=ROOT))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT))
    cxx_flags = ["-O3", "-fopenmp"]
    common = dict(
        name="conv_ext._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if use_cuda() and cuda_sources:
        return CUDAExtension(
            sources=sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            **common,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx_flags}, **common)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
