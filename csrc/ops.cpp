// Schemas of the conv_ext operators, the argument checks every backend shares, and what every
// backend does with complex operands.
//
// The three ops are bilinear and differentiate each other (see conv_ext/_ops.py):
//   conv2d(x, w, b)                  y  = F(x, w) + b
//   conv2d_grad_input(gy, w, size)   gx = adjoint of F in x (a transposed convolution)
//   conv2d_grad_weight(x, gy, size)  gw = adjoint of F in w
// The grad ops take the spatial size they cannot infer when stride > 1. Complex operands (as
// F.conv2d takes them) are computed by the ops on their real and imaginary parts.
//
// conv2d_backward(gy, x, w, mask) = (gx, gw, sum of gy), those the mask asks for, as ATen's
// convolution_backward: conv2d's backward in one call, so that a backend can compute the three
// together (the CPU's depthwise layers read grad_output once for all three). Everywhere else it
// is the three calls.
#include <Python.h>

#include "conv2d.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/complex.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/imag.h>
#include <ATen/ops/real.h>
#include <c10/util/Exception.h>
#include <c10/util/strides.h>
#include <torch/library.h>

// A Python extension module named conv_ext._C with no functions: importing it runs the static
// registrations below. This avoids a pybind11 dependency.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace conv_ext {

using at::Tensor;

namespace {

void check_pair(at::IntArrayRef values, const char* name) {
  TORCH_CHECK(values.size() == 2, "expected ", name,
              " to be a single integer value or a list of 2 values to match the convolution "
              "dimensions, but got ", name, "=", values);
}

void check_hyperparameters(at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  check_pair(stride, "stride");
  check_pair(padding, "padding");
  check_pair(dilation, "dilation");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "non-positive stride is not supported, got stride=",
              stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0,
              "negative padding is not supported, got padding=", padding);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0,
              "non-positive dilation is not supported, got dilation=", dilation);
  TORCH_CHECK(groups > 0, "non-positive groups is not supported, got groups=", groups);
}

void check_4d(const at::Tensor& t, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == 4, "expected ", name, " to be 4-D ", layout, ", but got ", name,
              " of size ", t.sizes());
}

// Operands must be floating point or complex, of one dtype and on one device, as F.conv2d requires.
void check_same_type(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                     const char* b_name) {
  const auto dtype = a.scalar_type();
  TORCH_CHECK(at::isFloatingType(dtype) || dtype == at::kComplexFloat || dtype == at::kComplexDouble,
              "conv_ext supports floating-point and complex ", a_name,
              " only (float64, float32, float16, bfloat16, complex128, complex64), but got ", dtype);
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), a_name, " type (", a.scalar_type(), ") and ",
              b_name, " type (", b.scalar_type(), ") should be the same");
  TORCH_CHECK(a.device() == b.device(), a_name, " (on ", a.device(), ") and ", b_name, " (on ",
              b.device(), ") should be on the same device");
}

int64_t output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  return (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

// Fills everything but the tensor sizes, then derives and checks the output size.
Conv2dGeometry make_geometry(int64_t batch, int64_t in_channels, int64_t in_h, int64_t in_w,
                             int64_t out_channels, int64_t kernel_h, int64_t kernel_w,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(kernel_h > 0 && kernel_w > 0, "kernel size must be positive, got (", kernel_h,
              " x ", kernel_w, ")");
  const int64_t padded_h = in_h + 2 * padding[0], padded_w = in_w + 2 * padding[1];
  const int64_t span_h = dilation[0] * (kernel_h - 1) + 1, span_w = dilation[1] * (kernel_w - 1) + 1;
  TORCH_CHECK(padded_h >= span_h && padded_w >= span_w,
              "Calculated padded input size per channel: (", padded_h, " x ", padded_w,
              "). Kernel size: (", span_h, " x ", span_w,
              "). Kernel size can't be greater than actual input size");
  return Conv2dGeometry{batch, in_channels, in_h, in_w, out_channels, kernel_h, kernel_w,
                        output_size(in_h, kernel_h, stride[0], padding[0], dilation[0]),
                        output_size(in_w, kernel_w, stride[1], padding[1], dilation[1]),
                        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                        groups};
}

void check_out_channels(int64_t out_channels, int64_t groups) {
  TORCH_CHECK(out_channels % groups == 0, "Given groups=", groups,
              ", expected the number of output channels (", out_channels,
              ") to be divisible by groups");
}

void check_grad_output_size(const Conv2dGeometry& g, const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w,
              "expected grad_output of spatial size (", g.out_h, ", ", g.out_w,
              ") for these convolution arguments, but got grad_output of size ",
              grad_output.sizes());
}

}  // namespace

Conv2dGeometry check_conv2d(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_hyperparameters(stride, padding, dilation, groups);
  check_4d(input, "input", "(N, C, H, W)");
  check_4d(weight, "weight", "(out_channels, in_channels / groups, kH, kW)");
  check_same_type(input, "Input", weight, "weight");
  const int64_t out_channels = weight.size(0);
  TORCH_CHECK(out_channels > 0, "Given groups=", groups,
              ", expected weight to be at least 1 at dimension 0, but got weight of size ",
              weight.sizes(), " instead");
  TORCH_CHECK(input.numel() > 0 || input.size(0) == 0 || input.size(1) == 0,
              "Only zero batch or zero channel inputs are supported, but got input shape: ",
              input.sizes());
  TORCH_CHECK(out_channels % groups == 0, "Given groups=", groups,
              ", expected weight to be divisible by ", groups,
              " at dimension 0, but got weight of size ", weight.sizes(), " instead");
  TORCH_CHECK(input.size(1) == weight.size(1) * groups, "Given groups=", groups,
              ", weight of size ", weight.sizes(), ", expected input", input.sizes(), " to have ",
              weight.size(1) * groups, " channels, but got ", input.size(1), " channels instead");
  if (bias.has_value()) {
    check_same_type(input, "Input", *bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels, "Given weight of size ",
                weight.sizes(), ", expected bias to be 1-dimensional with ", out_channels,
                " elements, but got bias of size ", bias->sizes(), " instead");
  }
  return make_geometry(input.size(0), input.size(1), input.size(2), input.size(3), out_channels,
                       weight.size(2), weight.size(3), stride, padding, dilation, groups);
}

Conv2dGeometry check_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       at::IntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups) {
  check_hyperparameters(stride, padding, dilation, groups);
  check_4d(grad_output, "grad_output", "(N, out_channels, H_out, W_out)");
  check_4d(weight, "weight", "(out_channels, in_channels / groups, kH, kW)");
  check_same_type(grad_output, "grad_output", weight, "weight");
  TORCH_CHECK(input_size.size() == 2 && input_size[0] >= 0 && input_size[1] >= 0,
              "expected input_size to be the input's (H, W), got ", input_size);
  TORCH_CHECK(grad_output.size(1) == weight.size(0), "expected grad_output to have ",
              weight.size(0), " channels (weight of size ", weight.sizes(), "), but got ",
              grad_output.size(1));
  check_out_channels(weight.size(0), groups);
  auto g = make_geometry(grad_output.size(0), weight.size(1) * groups, input_size[0],
                         input_size[1], weight.size(0), weight.size(2), weight.size(3), stride,
                         padding, dilation, groups);
  check_grad_output_size(g, grad_output);
  return g;
}

Conv2dGeometry check_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups) {
  check_hyperparameters(stride, padding, dilation, groups);
  check_4d(input, "input", "(N, C, H, W)");
  check_4d(grad_output, "grad_output", "(N, out_channels, H_out, W_out)");
  check_same_type(input, "Input", grad_output, "grad_output");
  TORCH_CHECK(kernel_size.size() == 2, "expected kernel_size to be (kH, kW), got ", kernel_size);
  TORCH_CHECK(input.size(0) == grad_output.size(0), "expected input and grad_output to have the "
              "same batch size, but got ", input.size(0), " and ", grad_output.size(0));
  TORCH_CHECK(input.size(1) % groups == 0, "Given groups=", groups,
              ", expected the number of input channels (", input.size(1),
              ") to be divisible by groups");
  check_out_channels(grad_output.size(1), groups);
  auto g = make_geometry(input.size(0), input.size(1), input.size(2), input.size(3),
                         grad_output.size(1), kernel_size[0], kernel_size[1], stride, padding,
                         dilation, groups);
  check_grad_output_size(g, grad_output);
  return g;
}

Conv2dGeometry check_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups) {
  auto g = check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups);
  check_4d(grad_output, "grad_output", "(N, out_channels, H_out, W_out)");
  check_same_type(grad_output, "grad_output", input, "input");
  TORCH_CHECK(grad_output.size(0) == g.batch && grad_output.size(1) == g.out_channels,
              "expected grad_output of size (", g.batch, ", ", g.out_channels, ", ", g.out_h, ", ", g.out_w,
              ") for input of size ", input.sizes(), " and weight of size ", weight.sizes(),
              ", but got grad_output of size ", grad_output.sizes());
  check_grad_output_size(g, grad_output);
  return g;
}

namespace {

// The operator of that name, to call through the dispatcher with that signature.
template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace

Tensor conv2d_op(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static const auto op = typed_op<decltype(conv2d_op)>("conv_ext::conv2d");
  return op.call(input, weight, bias, stride, padding, dilation, groups);
}

Tensor grad_input_op(const Tensor& grad_output, const Tensor& weight, c10::SymIntArrayRef input_size,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static const auto op = typed_op<decltype(grad_input_op)>("conv_ext::conv2d_grad_input");
  return op.call(grad_output, weight, input_size, stride, padding, dilation, groups);
}

Tensor grad_weight_op(const Tensor& input, const Tensor& grad_output, c10::SymIntArrayRef kernel_size,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static const auto op = typed_op<decltype(grad_weight_op)>("conv_ext::conv2d_grad_weight");
  return op.call(input, grad_output, kernel_size, stride, padding, dilation, groups);
}

std::tuple<Tensor, Tensor, Tensor> conv2d_backward_op(const Tensor& grad_output, const Tensor& input,
                                                      const Tensor& weight, at::IntArrayRef stride,
                                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                                      int64_t groups, std::array<bool, 3> output_mask) {
  static const auto op = typed_op<decltype(conv2d_backward_op)>("conv_ext::conv2d_backward");
  return op.call(grad_output, input, weight, stride, padding, dilation, groups, output_mask);
}

std::tuple<Tensor, Tensor, Tensor> conv2d_backward_by_three_ops(const Tensor& grad_output, const Tensor& input,
                                                                const Tensor& weight, at::IntArrayRef stride,
                                                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                                                int64_t groups, std::array<bool, 3> output_mask) {
  const auto [want_input, want_weight, want_bias] = output_mask;
  return {want_input ? grad_input_op(grad_output, weight, input.sym_sizes().slice(2), stride, padding, dilation, groups)
                     : Tensor(),
          want_weight ? grad_weight_op(input, grad_output, weight.sym_sizes().slice(2), stride, padding, dilation, groups)
                      : Tensor(),
          want_bias ? grad_output.sum({0, 2, 3}) : Tensor()};
}

namespace {

// f(a, b) for complex a = p + iq and b = r + is, f bilinear (each op is, in its two tensors), as
// F.conv2d computes complex convolutions: from three calls of f on real tensors (Gauss's trick),
// f(p, r) - f(q, s) + i (f(p + q, r + s) - f(p, r) - f(q, s)), in the layout the op's rule gives.
template <typename Fn>
Tensor complex_bilinear(const Tensor& a, const Tensor& b, Fn&& f) {
  const Tensor a_values = a.resolve_conj(), b_values = b.resolve_conj();
  const Tensor p = at::real(a_values), q = at::imag(a_values), r = at::real(b_values), s = at::imag(b_values);
  const Tensor pr = f(p, r), qs = f(q, s), sum = f(p + q, r + s);
  return in_memory_format(at::complex(pr - qs, sum - pr - qs), conv2d_memory_format(a, b));
}

}  // namespace

Tensor complex_conv2d(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Tensor output = complex_bilinear(input, weight, [&](const Tensor& x, const Tensor& w) {
    return conv2d_op(x, w, std::nullopt, stride, padding, dilation, groups);
  });
  if (bias.has_value() && bias->defined()) output.add_(bias->resolve_conj().view({1, -1, 1, 1}));
  return output;
}

Tensor complex_conv2d_grad_input(const Tensor& grad_output, const Tensor& weight, at::IntArrayRef input_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups) {
  return complex_bilinear(grad_output, weight, [&](const Tensor& gy, const Tensor& w) {
    return grad_input_op(gy, w, c10::fromIntArrayRefSlow(input_size), stride, padding, dilation, groups);
  });
}

Tensor complex_conv2d_grad_weight(const Tensor& input, const Tensor& grad_output, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups) {
  return complex_bilinear(input, grad_output, [&](const Tensor& x, const Tensor& gy) {
    return grad_weight_op(x, gy, c10::fromIntArrayRefSlow(kernel_size), stride, padding, dilation, groups);
  });
}

at::MemoryFormat conv2d_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                             weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  if (!channels_last) return at::MemoryFormat::Contiguous;
  if (!input.is_cuda()) return at::MemoryFormat::ChannelsLast;
  // On CUDA only cuDNN gives F.conv2d channels_last results, and it runs no float64 (complex128
  // is computed as float64 convolutions) and can be switched off.
  const bool cudnn_runs_it = at::detail::getCUDAHooks().compiledWithCuDNN() && at::globalContext().userEnabledCuDNN() &&
                             c10::toRealValueType(input.scalar_type()) != at::kDouble;
  return cudnn_runs_it ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

bool has_fresh_strides(const at::Tensor& t, at::MemoryFormat format) {
  return format == at::MemoryFormat::ChannelsLast
             ? t.strides() == at::IntArrayRef(c10::get_channels_last_strides_2d(t.sizes()))
             : t.strides() == at::IntArrayRef(c10::contiguous_strides(t.sizes()));
}

at::Tensor in_memory_format(const at::Tensor& result, at::MemoryFormat format) {
  if (has_fresh_strides(result, format)) return result;
  return at::empty(result.sizes(), result.options().memory_format(format)).copy_(result);
}

namespace {

// Under torch.autocast the forward runs in the autocast dtype, as F.conv2d does (it is on
// autocast's lower-precision list): cast the floating operands, then redispatch below autocast.
template <c10::DeviceType device>
at::Tensor conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device);
  static const auto op = typed_op<decltype(conv2d_autocast<device>)>("conv_ext::conv2d");
  return op.call(at::autocast::cached_cast(dtype, input, device),
                 at::autocast::cached_cast(dtype, weight, device),
                 at::autocast::cached_cast(dtype, bias, device), stride, padding, dilation, groups);
}

}  // namespace

TORCH_LIBRARY(conv_ext, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_grad_input(Tensor grad_output, Tensor weight, SymInt[2] input_size, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_grad_weight(Tensor input, Tensor grad_output, SymInt[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

namespace {

std::tuple<Tensor, Tensor, Tensor> conv2d_backward_checked(const Tensor& grad_output, const Tensor& input,
                                                           const Tensor& weight, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                                           int64_t groups, std::array<bool, 3> output_mask) {
  check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups);
  return conv2d_backward_by_three_ops(grad_output, input, weight, stride, padding, dilation, groups, output_mask);
}

}  // namespace

// Every backend but the CPU's (CUDA) runs conv2d_backward as the three calls.
TORCH_LIBRARY_IMPL(conv_ext, CompositeExplicitAutograd, m) {
  m.impl("conv2d_backward", &conv2d_backward_checked);
}

TORCH_LIBRARY_IMPL(conv_ext, AutocastCPU, m) {
  m.impl("conv2d", &conv2d_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(conv_ext, AutocastCUDA, m) {
  m.impl("conv2d", &conv2d_autocast<c10::DeviceType::CUDA>);
}

}  // namespace conv_ext
