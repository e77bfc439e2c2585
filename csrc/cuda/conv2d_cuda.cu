// CUDA kernels of the three conv_ext operators. Four algorithms:
// - depthwise kernels (depthwise.cuh) where each output channel reads one input channel;
// - the channels-last tensor-core GEMMs (channels_last_mma.cuh), all three ops in float16, bfloat16
//   and float32 (as TF32 where PyTorch lets cuDNN use TF32, else by 3xTF32, float32's accuracy:
//   tf32_allowed()), where the channels per group fill whole 16-byte chunks (multiples of 8, or of
//   4 in float32; the input and weight gradients' output channels too): the activations are made
//   channels_last (one conversion, none for channels_last inputs) and the filters ordered
//   (K, R, S, C / groups);
// - the tiled implicit GEMM (tiled_gemm.cuh), wherever its 64 x 64 tiles are not mostly empty: on
//   the tensor cores for float16 and bfloat16, and for float32 where PyTorch lets cuDNN use TF32
//   (use_tensor_cores), in FMA instructions otherwise;
// - direct kernels (direct.cuh), one thread per element of the result: narrow groups (a product
//   with fewer than 8 rows or columns per group), and the fallback for grids the tiled kernel
//   cannot launch.
// All accumulate in the accumulation type (float for float16 and bfloat16), deterministically (no
// atomics), with 64-bit indices. The other algorithms make their inputs contiguous (NCHW) first.
// Every result is returned in F.conv2d's layout.
// CONV_EXT_CUDA_ALGORITHM=direct or gemm forces one of those (gemm: wherever its grid fits), and
// disables the channels-last GEMM, for the tests.
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

#include <array>
#include <mutex>
#include <optional>
#include <vector>

namespace conv_ext {
namespace {

using at::Tensor;

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

// The tiled GEMM's products of Problem (Problem::parts), planned for the current GPU, where it is
// the algorithm to run them all.
template <template <typename> class Problem>
std::optional<std::vector<tiled_gemm::PlannedPart<Problem>>> tiled_gemm_plans(const Conv2dGeometry& g,
                                                                                at::ScalarType dtype) {
  if (env_is("CONV_EXT_CUDA_ALGORITHM", "direct")) return std::nullopt;
  const bool forced = env_is("CONV_EXT_CUDA_ALGORITHM", "gemm");
  auto planned = tiled_gemm::plan_parts<Problem>(g, multiprocessors(), use_tensor_cores(dtype));
  for (const auto& p : planned) {
    const auto& shape = p.plan.shape;
    if (!p.plan.fits() || !(forced || (shape.rows >= 8 && shape.cols >= 8))) return std::nullopt;
  }
  return planned;
}

// Whether the depthwise kernels compute this convolution (unless a test forces another algorithm).
bool use_depthwise(const Conv2dGeometry& g) {
  return depthwise::applies(g) && !env_is("CONV_EXT_CUDA_ALGORITHM", "direct") &&
         !env_is("CONV_EXT_CUDA_ALGORITHM", "gemm");
}

// Whether the channels-last tensor-core GEMMs may compute geometry g (unless a test forces another
// algorithm); `applies` says whether the op's kernel does.
bool use_channels_last_mma(const Conv2dGeometry& g, bool applies) {
  return applies && tensor_core_kernel_built_for_this_gpu() && !depthwise::applies(g) &&
         !env_is("CONV_EXT_CUDA_ALGORITHM", "direct") && !env_is("CONV_EXT_CUDA_ALGORITHM", "gemm");
}

// t contiguous in `format` (a 4-d tensor's memory order), starting at a 16-byte boundary as the
// channels-last GEMM's copies need.
Tensor aligned_contiguous(const Tensor& t, at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  Tensor c = t.contiguous(format);
  return reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 == 0 ? c : c.clone(format);
}

Tensor empty_channels_last(at::IntArrayRef sizes, const Tensor& like) {
  return at::empty(sizes, like.options().memory_format(at::MemoryFormat::ChannelsLast));
}

// Fills out from the inputs (contiguous): by depthwise(g, multiprocessors, launch, out, inputs...)
// where it applies, by the tiled GEMM's Problem where that does, else by direct(g, launch, out,
// inputs...).
template <template <typename> class Problem, typename Depthwise, typename Direct, typename... Inputs>
void compute(const Tensor& out, const Conv2dGeometry& g, Depthwise depthwise, Direct direct,
             const Inputs&... inputs) {
  if (out.numel() == 0) return;
  if (use_depthwise(g)) {
    depthwise(g, multiprocessors(), LaunchOnCurrentStream{}, out, inputs...);
    return;
  }
  if (const auto planned = tiled_gemm_plans<Problem>(g, out.scalar_type())) {
    for (const auto& p : *planned) {
      tiled_gemm::run_tiled_gemm<Problem>(p.plan, p.part, LaunchOnCurrentStream{}, out, inputs...);
    }
    return;
  }
  direct(g, LaunchOnCurrentStream{}, out, inputs...);
}

Tensor conv2d_cuda(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                   int64_t groups) {
  const auto g = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  if (input.is_complex()) return complex_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const auto dtype = input.scalar_type();
  if (use_channels_last_mma(g, channels_last_mma::applies_forward(g, dtype))) {
    Tensor y = empty_channels_last({g.batch, g.out_channels, g.out_h, g.out_w}, input);
    channels_last_mma::run_forward(g, multiprocessors(), LaunchOnCurrentStream{}, y,
                                   aligned_contiguous(input, at::MemoryFormat::ChannelsLast),
                                   aligned_contiguous(weight.permute({0, 2, 3, 1})),
                                   bias.has_value() ? bias->contiguous() : Tensor(), channels_last_mma::whole_output(g),
                                   tf32_allowed());
    return in_memory_format(y, conv2d_memory_format(input, weight));
  }
  Tensor y = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  compute<tiled_gemm::ForwardProblem>(
      y, g, [](auto&&... a) { return depthwise::run_forward(a...); },
      [](auto&&... a) { direct::run_forward(a...); },
      input.contiguous(), weight.contiguous(), bias.has_value() ? bias->contiguous() : Tensor());
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
  const auto dtype = grad_output.scalar_type();
  if (use_channels_last_mma(g, channels_last_mma::applies_grad_input(g, dtype))) {
    Tensor gx = empty_channels_last({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output);
    channels_last_mma::run_grad_input(g, multiprocessors(), LaunchOnCurrentStream{}, gx,
                                      aligned_contiguous(grad_output, at::MemoryFormat::ChannelsLast), weight,
                                      tf32_allowed());
    return in_memory_format(gx, conv2d_memory_format(grad_output, weight));
  }
  Tensor gx = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options());
  compute<tiled_gemm::GradInputProblem>(
      gx, g, [](auto&&... a) { return depthwise::run_grad_input(a...); },
      [](auto&&... a) { direct::run_grad_input(a...); },
      grad_output.contiguous(), weight.contiguous());
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
  const auto dtype = input.scalar_type();
  if (use_channels_last_mma(g, channels_last_mma::applies_grad_weight(g, dtype))) {
    Tensor gw_krsc = at::empty({g.out_channels, g.kernel_h, g.kernel_w, g.in_channels_per_group()}, input.options());
    channels_last_mma::run_grad_weight(g, multiprocessors(), LaunchOnCurrentStream{}, gw_krsc,
                                       aligned_contiguous(input, at::MemoryFormat::ChannelsLast),
                                       aligned_contiguous(grad_output, at::MemoryFormat::ChannelsLast), tf32_allowed());
    return in_memory_format(gw_krsc.permute({0, 3, 1, 2}), conv2d_memory_format(input, grad_output));
  }
  Tensor gw = at::empty({g.out_channels, g.in_channels_per_group(), g.kernel_h, g.kernel_w},
                        input.options());
  compute<tiled_gemm::GradWeightProblem>(
      gw, g, [](auto&&... a) { return depthwise::run_grad_weight(a...); },
      [](auto&&... a) { direct::run_grad_weight(a...); },
      input.contiguous(), grad_output.contiguous());
  return in_memory_format(gw, conv2d_memory_format(input, grad_output));
}

}  // namespace

TORCH_LIBRARY_IMPL(conv_ext, CUDA, m) {
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_grad_input", &conv2d_grad_input_cuda);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight_cuda);
}

}  // namespace conv_ext
