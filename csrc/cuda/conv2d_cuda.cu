// CUDA kernels of the three conv_ext operators. Four algorithms (choose_algorithm):
// - depthwise kernels (depthwise.cuh) where each output channel reads one input channel, on NCHW
//   or channels_last activations as they come;
// - the channels-last tensor-core GEMMs (channels_last_mma.cuh), all three ops in float16, bfloat16
//   and float32 (as TF32 where PyTorch lets cuDNN use TF32, else by 3xTF32, float32's accuracy:
//   tf32_allowed()), where the channels per group fill whole 16-byte chunks (multiples of 8, or of
//   4 in float32; the input and weight gradients' output channels too; a single group's input
//   channels are padded to fill them where they do not, chunked_channels): the activations are made
//   channels_last (one conversion, none for channels_last inputs) and the filters ordered
//   (K, R, S, C / groups);
// - the tiled implicit GEMM (tiled_gemm.cuh), wherever its 64 x 64 tiles are not mostly empty: on
//   the tensor cores for float16 and bfloat16, and for float32 where PyTorch lets cuDNN use TF32
//   (use_tensor_cores), in FMA instructions otherwise;
// - direct kernels (direct.cuh), one thread per element of the result: narrow groups (a product
//   with fewer than 8 rows or columns per group), and the fallback for grids the tiled kernel
//   cannot launch.
// All accumulate in the accumulation type (float for float16 and bfloat16), deterministically (no
// atomics), with 64-bit indices. The tiled and direct kernels make their inputs contiguous (NCHW)
// first. Every result is returned in F.conv2d's layout.
// CONV_EXT_CUDA_ALGORITHM=direct or gemm forces one of those two (gemm: wherever its grid fits),
// for the tests.
#include "../conv2d.h"
#include "channels_last_mma.cuh"
#include "depthwise.cuh"
#include "direct.cuh"
#include "tiled_gemm.cuh"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <optional>
#include <vector>

namespace conv_ext {
namespace {

using at::Tensor;
using channels_last_mma::aligned_contiguous;

// Launches a kernel on the current stream, checked.
struct LaunchOnCurrentStream {
  template <typename Kernel, typename... Arguments>
  void operator()(Kernel kernel, dim3 grid, dim3 block, Arguments... arguments) const {
    kernel<<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(arguments...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// Whether F.conv2d may use TF32 for float32 here: torch.backends.cudnn.allow_tf32 (on by default),
// or its newer form torch.backends.cudnn.conv.fp32_precision = "tf32".
bool tf32_allowed() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 10)
  return at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
#else
  return at::globalContext().allowTF32CuDNN();
#endif
}

// Whether the current GPU runs the tensor-core kernels (tensor_core_gemm_kernel, and
// channels_last_mma_kernel from the same build) from sm_80 code or newer, asked of the runtime once
// per device.
bool tensor_core_kernel_built_for_this_gpu() {
  static std::array<std::once_flag, C10_COMPILE_TIME_MAX_GPUS> asked;
  static std::array<bool, C10_COMPILE_TIME_MAX_GPUS> built{};
  const c10::DeviceIndex device = c10::cuda::current_device();
  std::call_once(asked[device], [device] {
    cudaFuncAttributes kernel;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&kernel, tiled_gemm::tensor_core_gemm_kernel<tiled_gemm::ForwardProblem<float>>));
    built[device] = kernel.ptxVersion >= 80;
  });
  return built[device];
}

// Whether the tiled GEMM of this dtype runs on the tensor cores: float16 and bfloat16 always,
// float32 as TF32 where F.conv2d would; where the GPU runs the kernel built for them.
bool use_tensor_cores(at::ScalarType dtype) {
  const bool wanted = dtype == at::kHalf || dtype == at::kBFloat16 || (dtype == at::kFloat && tf32_allowed());
  return wanted && tensor_core_kernel_built_for_this_gpu();
}

int64_t multiprocessors() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

enum class Algorithm { kDepthwise, kChannelsLastMma, kTiledGemm, kDirect };

// The algorithm for geometry g, for an op whose channels-last GEMM takes g where `mma_applies`;
// CONV_EXT_CUDA_ALGORITHM=direct or gemm forces one, for the tests.
Algorithm choose_algorithm(const Conv2dGeometry& g, bool mma_applies) {
  if (env_is("CONV_EXT_CUDA_ALGORITHM", "direct")) return Algorithm::kDirect;
  if (env_is("CONV_EXT_CUDA_ALGORITHM", "gemm")) return Algorithm::kTiledGemm;
  if (depthwise::applies(g)) return Algorithm::kDepthwise;
  if (mma_applies && tensor_core_kernel_built_for_this_gpu()) return Algorithm::kChannelsLastMma;
  return Algorithm::kTiledGemm;
}

// The memory format an algorithm works in: channels_last for the channels-last GEMM, the
// activations' own for the depthwise kernels (which read and write either), NCHW for the others.
at::MemoryFormat working_format(Algorithm algorithm, const Tensor& activations) {
  switch (algorithm) {
    case Algorithm::kChannelsLastMma: return at::MemoryFormat::ChannelsLast;
    case Algorithm::kDepthwise:
      return activations.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                                     : at::MemoryFormat::Contiguous;
    default: return at::MemoryFormat::Contiguous;
  }
}

// Fills out (NCHW) from the inputs (NCHW) by the tiled GEMM's Problem (Problem::parts, planned for
// the current GPU), where its grids fit and, unless CONV_EXT_CUDA_ALGORITHM=gemm forces it, its
// 64 x 64 tiles have at least 8 rows and columns; else by direct(g, launch, out, inputs...).
template <template <typename> class Problem, typename Direct, typename... Inputs>
void tiled_gemm_or_direct(bool direct_only, const Tensor& out, const Conv2dGeometry& g, Direct direct,
                          const Inputs&... inputs) {
  if (!direct_only) {
    const bool any_width = env_is("CONV_EXT_CUDA_ALGORITHM", "gemm");
    const auto planned = tiled_gemm::plan_parts<Problem>(g, multiprocessors(), use_tensor_cores(out.scalar_type()));
    const bool gemm = std::all_of(planned.begin(), planned.end(), [&](const auto& p) {
      return p.plan.fits() && (any_width || (p.plan.shape.rows >= 8 && p.plan.shape.cols >= 8));
    });
    if (gemm) {
      for (const auto& p : planned) {
        tiled_gemm::run_tiled_gemm<Problem>(p.plan, p.part, LaunchOnCurrentStream{}, out, inputs...);
      }
      return;
    }
  }
  direct(g, LaunchOnCurrentStream{}, out, inputs...);
}

Tensor conv2d_cuda(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                   int64_t groups) {
  const auto g = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  if (input.is_complex()) return complex_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const Algorithm algorithm = choose_algorithm(g, channels_last_mma::applies_forward(g, input.scalar_type()));
  const at::MemoryFormat format = working_format(algorithm, input);
  Tensor y = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options().memory_format(format));
  if (y.numel() > 0) {
    const Tensor x = aligned_contiguous(input, format), b = bias.has_value() ? bias->contiguous() : Tensor();
    switch (algorithm) {
      case Algorithm::kChannelsLastMma:
        channels_last_mma::run_layer_forward(g, multiprocessors(), LaunchOnCurrentStream{}, y, x, weight, b,
                                             tf32_allowed());
        break;
      case Algorithm::kDepthwise:
        depthwise::run_forward(g, multiprocessors(), LaunchOnCurrentStream{}, y, x, weight.contiguous(), b);
        break;
      default:
        tiled_gemm_or_direct<tiled_gemm::ForwardProblem>(
            algorithm == Algorithm::kDirect, y, g, [](auto&&... a) { direct::run_forward(a...); }, x,
            weight.contiguous(), b);
    }
  }
  return in_memory_format(y, conv2d_memory_format(input, weight));
}

Tensor conv2d_grad_input_cuda(const Tensor& grad_output, const Tensor& weight,
                              at::IntArrayRef input_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g =
      check_conv2d_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups);
  if (grad_output.is_complex()) {
    return complex_conv2d_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups);
  }
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  const Algorithm algorithm =
      choose_algorithm(g, channels_last_mma::applies_grad_input(g, grad_output.scalar_type()));
  const at::MemoryFormat format = working_format(algorithm, grad_output);
  Tensor gx = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options().memory_format(format));
  if (gx.numel() > 0) {
    const Tensor gy = aligned_contiguous(grad_output, format);
    switch (algorithm) {
      case Algorithm::kChannelsLastMma:
        channels_last_mma::run_grad_input(g, multiprocessors(), LaunchOnCurrentStream{}, gx, gy, weight,
                                          tf32_allowed());
        break;
      case Algorithm::kDepthwise:
        depthwise::run_grad_input(g, multiprocessors(), LaunchOnCurrentStream{}, gx, gy, weight.contiguous());
        break;
      default:
        tiled_gemm_or_direct<tiled_gemm::GradInputProblem>(
            algorithm == Algorithm::kDirect, gx, g, [](auto&&... a) { direct::run_grad_input(a...); }, gy,
            weight.contiguous());
    }
  }
  return in_memory_format(gx, conv2d_memory_format(grad_output, weight));
}

Tensor conv2d_grad_weight_cuda(const Tensor& input, const Tensor& grad_output,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g =
      check_conv2d_grad_weight(input, grad_output, kernel_size, stride, padding, dilation, groups);
  if (input.is_complex()) {
    return complex_conv2d_grad_weight(input, grad_output, kernel_size, stride, padding, dilation, groups);
  }
  const c10::cuda::CUDAGuard device_guard(input.device());
  const Algorithm algorithm = choose_algorithm(g, channels_last_mma::applies_grad_weight(g, input.scalar_type()));
  const at::MemoryFormat format = working_format(algorithm, input);
  // (K, C / groups, R, S); the channels-last GEMM's in (K, R, S, C / groups) order, as its filters.
  const Tensor gw = algorithm == Algorithm::kChannelsLastMma
      ? at::empty({g.out_channels, g.kernel_h, g.kernel_w, g.in_channels_per_group()}, input.options())
            .permute({0, 3, 1, 2})
      : at::empty({g.out_channels, g.in_channels_per_group(), g.kernel_h, g.kernel_w}, input.options());
  if (gw.numel() > 0) {
    const Tensor x = aligned_contiguous(input, format), gy = aligned_contiguous(grad_output, format);
    switch (algorithm) {
      case Algorithm::kChannelsLastMma:
        channels_last_mma::run_grad_weight(g, multiprocessors(), LaunchOnCurrentStream{}, gw.permute({0, 2, 3, 1}), x,
                                           gy, tf32_allowed());
        break;
      case Algorithm::kDepthwise:
        depthwise::run_grad_weight(g, multiprocessors(), LaunchOnCurrentStream{}, gw, x, gy);
        break;
      default:
        tiled_gemm_or_direct<tiled_gemm::GradWeightProblem>(
            algorithm == Algorithm::kDirect, gw, g, [](auto&&... a) { direct::run_grad_weight(a...); }, x, gy);
    }
  }
  return in_memory_format(gw, conv2d_memory_format(input, grad_output));
}

}  // namespace

TORCH_LIBRARY_IMPL(conv_ext, CUDA, m) {
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_grad_input", &conv2d_grad_input_cuda);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight_cuda);
}

}  // namespace conv_ext
