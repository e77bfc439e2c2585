// CUDA kernels of the three conv_ext operators. Three algorithms:
// - depthwise kernels (depthwise.cuh) where each output channel reads one input channel;
// - the tiled implicit GEMM (tiled_gemm.cuh), wherever its 64 x 64 tiles are not mostly empty: on
//   the tensor cores for float16 and bfloat16, and for float32 where PyTorch lets cuDNN use TF32
//   (use_tensor_cores), in FMA instructions otherwise;
// - direct kernels, one thread per element of the result summing its terms in a fixed order:
//   narrow groups (a product with fewer than 8 rows or columns per group), and the fallback for
//   grids the tiled kernel cannot launch.
// All accumulate in the accumulation type (float for float16 and bfloat16), deterministically (no
// atomics), with 64-bit indices. Inputs in other layouts (channels_last) are made contiguous
// (NCHW) first, and the result returned in F.conv2d's layout.
// CONV_EXT_CUDA_ALGORITHM=direct or gemm forces one (gemm: wherever its grid fits), for the tests.
#include "../conv2d.h"
#include "depthwise.cuh"
#include "tiled_gemm.cuh"

#include <ATen/AccumulateType.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/version.h>

#include <array>
#include <mutex>

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

// y[n, k, oh, ow] = bias[k] + sum_{c, ki, kj} w[k, c, ki, kj] * x[n, g*Cg + c, ih, iw]
template <typename scalar_t>
__global__ void conv2d_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                      const scalar_t* __restrict__ bias, scalar_t* __restrict__ y,
                                      Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t total = g.batch * g.out_channels * g.out_h * g.out_w;
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  CONV_EXT_GRID_STRIDE_LOOP(index, total) {
    const int64_t ow = index % g.out_w, oh = index / g.out_w % g.out_h;
    const int64_t k = index / (g.out_w * g.out_h) % g.out_channels;
    const int64_t n = index / (g.out_w * g.out_h * g.out_channels);
    const scalar_t* x_group = x + (n * g.in_channels + k / kg * cg) * g.in_h * g.in_w;
    const scalar_t* w_k = w + k * cg * g.kernel_h * g.kernel_w;
    acc_t sum = bias != nullptr ? static_cast<acc_t>(bias[k]) : acc_t(0);
    for (int64_t c = 0; c < cg; ++c) {
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) continue;
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
          if (iw < 0 || iw >= g.in_w) continue;
          sum += static_cast<acc_t>(x_group[(c * g.in_h + ih) * g.in_w + iw]) *
                 static_cast<acc_t>(w_k[(c * g.kernel_h + ki) * g.kernel_w + kj]);
        }
      }
    }
    y[index] = static_cast<scalar_t>(sum);
  }
}

// gx[n, c, ih, iw] = sum over the outputs (k, oh, ow) whose window reads (ih, iw) at kernel
// offset (ki, kj): oh * sh - ph + ki * dh == ih, likewise for the width.
template <typename scalar_t>
__global__ void conv2d_grad_input_kernel(const scalar_t* __restrict__ gy,
                                         const scalar_t* __restrict__ w, scalar_t* __restrict__ gx,
                                         Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t total = g.batch * g.in_channels * g.in_h * g.in_w;
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  CONV_EXT_GRID_STRIDE_LOOP(index, total) {
    const int64_t iw = index % g.in_w, ih = index / g.in_w % g.in_h;
    const int64_t c = index / (g.in_w * g.in_h) % g.in_channels;
    const int64_t n = index / (g.in_w * g.in_h * g.in_channels);
    const int64_t group = c / cg, c_in_group = c % cg;
    acc_t sum = 0;
    for (int64_t k = group * kg; k < (group + 1) * kg; ++k) {
      const scalar_t* gy_k = gy + (n * g.out_channels + k) * g.out_h * g.out_w;
      const scalar_t* w_kc = w + (k * cg + c_in_group) * g.kernel_h * g.kernel_w;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        const int64_t h = ih + g.pad_h - ki * g.dilation_h;
        if (h < 0 || h % g.stride_h != 0 || h / g.stride_h >= g.out_h) continue;
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t v = iw + g.pad_w - kj * g.dilation_w;
          if (v < 0 || v % g.stride_w != 0 || v / g.stride_w >= g.out_w) continue;
          sum += static_cast<acc_t>(gy_k[h / g.stride_h * g.out_w + v / g.stride_w]) *
                 static_cast<acc_t>(w_kc[ki * g.kernel_w + kj]);
        }
      }
    }
    gx[index] = static_cast<scalar_t>(sum);
  }
}

// gw[k, c, ki, kj] = sum_{n, oh, ow} gy[n, k, oh, ow] * x[n, g*Cg + c, ih, iw]
template <typename scalar_t>
__global__ void conv2d_grad_weight_kernel(const scalar_t* __restrict__ x,
                                          const scalar_t* __restrict__ gy,
                                          scalar_t* __restrict__ gw, Conv2dGeometry g) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t cg = g.in_channels_per_group(), kg = g.out_channels_per_group();
  const int64_t total = g.out_channels * cg * g.kernel_h * g.kernel_w;
  CONV_EXT_GRID_STRIDE_LOOP(index, total) {
    const int64_t kj = index % g.kernel_w, ki = index / g.kernel_w % g.kernel_h;
    const int64_t c = index / (g.kernel_w * g.kernel_h) % cg;
    const int64_t k = index / (g.kernel_w * g.kernel_h * cg);
    const int64_t channel = k / kg * cg + c;
    acc_t sum = 0;
    for (int64_t n = 0; n < g.batch; ++n) {
      const scalar_t* x_plane = x + (n * g.in_channels + channel) * g.in_h * g.in_w;
      const scalar_t* gy_plane = gy + (n * g.out_channels + k) * g.out_h * g.out_w;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) continue;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
          if (iw < 0 || iw >= g.in_w) continue;
          sum += static_cast<acc_t>(gy_plane[oh * g.out_w + ow]) *
                 static_cast<acc_t>(x_plane[ih * g.in_w + iw]);
        }
      }
    }
    gw[index] = static_cast<scalar_t>(sum);
  }
}

// Whether F.conv2d may use TF32 for float32 here: torch.backends.cudnn.allow_tf32 (on by default),
// or its newer form torch.backends.cudnn.conv.fp32_precision = "tf32".
bool tf32_allowed() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 10)
  return at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
#else
  return at::globalContext().allowTF32CuDNN();
#endif
}

// Whether the current GPU runs tensor_core_gemm_kernel from sm_80 code or newer (wmma for these
// types), asked of the runtime once per device.
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

// The tiled GEMM's plan for this product on the current GPU, where it is the algorithm to run.
std::optional<tiled_gemm::GemmPlan> tiled_gemm_plan(const tiled_gemm::GemmShape& shape, at::ScalarType dtype) {
  if (env_is("CONV_EXT_CUDA_ALGORITHM", "direct")) return std::nullopt;
  const auto plan = tiled_gemm::plan_tiled_gemm(shape, multiprocessors(), use_tensor_cores(dtype));
  if (!plan.fits()) return std::nullopt;
  if (env_is("CONV_EXT_CUDA_ALGORITHM", "gemm") || (shape.rows >= 8 && shape.cols >= 8)) return plan;
  return std::nullopt;
}

// Whether the depthwise kernels compute this convolution (unless a test forces another algorithm).
bool use_depthwise(const Conv2dGeometry& g) {
  return depthwise::applies(g) && !env_is("CONV_EXT_CUDA_ALGORITHM", "direct") &&
         !env_is("CONV_EXT_CUDA_ALGORITHM", "gemm");
}

// Fills out, the product `shape` of the inputs (contiguous): by depthwise(g, multiprocessors,
// launch, out, inputs...) where it applies, by the tiled GEMM Problem where that does, else by the
// direct kernel direct_for(scalar_t{}), launched with one thread per element of out as
// kernel(inputs' data..., out's data, g).
template <template <typename> class Problem, typename Depthwise, typename DirectFor, typename... Inputs>
void compute(const Tensor& out, const Conv2dGeometry& g, const tiled_gemm::GemmShape& shape, Depthwise depthwise,
             DirectFor direct_for, const Inputs&... inputs) {
  const int64_t n = out.numel();
  if (n == 0) return;
  if (use_depthwise(g)) {
    depthwise(g, multiprocessors(), LaunchOnCurrentStream{}, out, inputs...);
    return;
  }
  if (const auto plan = tiled_gemm_plan(shape, out.scalar_type())) {
    tiled_gemm::run_tiled_gemm<Problem>(*plan, g, LaunchOnCurrentStream{}, out, inputs...);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_ext_cuda", [&] {
    LaunchOnCurrentStream{}(direct_for(scalar_t{}), dim3(blocks_for(n)), dim3(kThreads),
                            data_or_null<scalar_t>(inputs)..., out.mutable_data_ptr<scalar_t>(), g);
  });
}

Tensor conv2d_cuda(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                   int64_t groups) {
  const auto g = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  if (input.is_complex()) return complex_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard device_guard(input.device());
  Tensor y = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  compute<tiled_gemm::ForwardProblem>(
      y, g, tiled_gemm::forward_shape(g), [](auto&&... a) { return depthwise::run_forward(a...); },
      [](auto zero) { return conv2d_forward_kernel<decltype(zero)>; },
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
  Tensor gx = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options());
  compute<tiled_gemm::GradInputProblem>(
      gx, g, tiled_gemm::grad_input_shape(g), [](auto&&... a) { return depthwise::run_grad_input(a...); },
      [](auto zero) { return conv2d_grad_input_kernel<decltype(zero)>; },
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
  Tensor gw = at::empty({g.out_channels, g.in_channels_per_group(), g.kernel_h, g.kernel_w},
                        input.options());
  compute<tiled_gemm::GradWeightProblem>(
      gw, g, tiled_gemm::grad_weight_shape(g), [](auto&&... a) { return depthwise::run_grad_weight(a...); },
      [](auto zero) { return conv2d_grad_weight_kernel<decltype(zero)>; },
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
