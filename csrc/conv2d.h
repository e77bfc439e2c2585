// The conv_ext operators, shared between ops.cpp (schemas, checks) and the backends.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/ArrayRef.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>

namespace conv_ext {

// Every size and hyper-parameter of one grouped 2-D convolution, after validation.
struct Conv2dGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;

  C10_HOST_DEVICE int64_t in_channels_per_group() const { return in_channels / groups; }
  C10_HOST_DEVICE int64_t out_channels_per_group() const { return out_channels / groups; }
  // Rows of the im2col matrix of one group: (input channel, kernel row, kernel column).
  C10_HOST_DEVICE int64_t patch_size() const { return in_channels_per_group() * kernel_h * kernel_w; }
  C10_HOST_DEVICE bool unit_stride() const { return stride_h == 1 && stride_w == 1; }
};

// Whether the environment variable name is set to value. Read on every call, so that the tests can
// force each algorithm of a backend.
inline bool env_is(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set != nullptr && std::strcmp(set, value) == 0;
}

// How a forward reads its weight: as given, (out_channels, in_channels / groups, R, S), or as the
// weight (in_channels, out_channels / groups, R, S) of the layer whose stride-1 input gradient
// this forward is, each filter rotated by 180 degrees (without making that copy).
enum class FilterOrder { as_given, flipped_transposed };

// Each check raises c10::Error (a Python RuntimeError) naming the problem, so a direct
// torch.ops caller gets the same protection as the Python layer.
Conv2dGeometry check_conv2d(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

Conv2dGeometry check_conv2d_grad_input(
    const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

Conv2dGeometry check_conv2d_grad_weight(
    const at::Tensor& input, const at::Tensor& grad_output, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// grad_output's shape checked against conv2d(input, weight) as well.
Conv2dGeometry check_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The ops through the dispatcher (named apart from ATen's at::conv2d, which ADL finds).
at::Tensor conv2d_op(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
at::Tensor grad_input_op(const at::Tensor& grad_output, const at::Tensor& weight, c10::SymIntArrayRef input_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
at::Tensor grad_weight_op(const at::Tensor& input, const at::Tensor& grad_output, c10::SymIntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_op(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask);

// conv2d_backward as calls of the three ops (and a sum for the bias), those output_mask asks for;
// the ops check their arguments (check_conv2d_backward checks them all, but not symbolic ones).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_by_three_ops(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask);

// The three ops on complex operands (complex64, complex128), for every backend: from the ops on
// their real and imaginary parts (see ops.cpp).
at::Tensor complex_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
at::Tensor complex_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                     at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups);
at::Tensor complex_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups);

// The layout F.conv2d gives its result: channels_last when the input or the weight is, on the
// CPU, and on CUDA where cuDNN computes it.
at::MemoryFormat conv2d_memory_format(const at::Tensor& input, const at::Tensor& weight);

// Whether t has exactly the strides of a fresh tensor in the given layout; the result with them
// (itself when it has them). Not Tensor::contiguous(format), which keeps the strides of a tensor
// that is "contiguous" in both layouts (size-1 or empty dimensions), where the fake kernels
// promise the fresh ones.
bool has_fresh_strides(const at::Tensor& t, at::MemoryFormat format);
at::Tensor in_memory_format(const at::Tensor& result, at::MemoryFormat format);

}  // namespace conv_ext
