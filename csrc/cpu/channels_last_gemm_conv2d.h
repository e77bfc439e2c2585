// The forward convolution as an implicit GEMM over channels-last bands: output (pixels x
// channels) = input (pixels x patch, read in place from a zero-padded, channels-innermost band
// of the input's rows) times the filters (patch x channels, packed once per call), on the
// micro-kernel of micro_kernel.h with its rows as output pixels and its panels as output
// channels. No panel of the input is copied, whatever the stride or dilation: for the strided
// layers, whose short output rows make implicit_gemm_conv2d.cpp pack its panels, grouped
// layers, and the stride-1 layers Winograd does not take, whose taps im2col would copy.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// Whether this CPU runs it (AVX2+FMA, unless CONV_EXT_CPU_ISA=generic).
bool channels_last_gemm_available();

// The forward (any groups, at least one input channel): the input dense NCHW or NHWC, float64,
// float32, float16 or bfloat16; the weight contiguous, read in the given order, and bias
// (possibly undefined) in the type computed in (float32 for float16 and bfloat16, which are
// widened as read). The result in the input's dtype (rounded once) and result_format.
at::Tensor channels_last_gemm_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, FilterOrder order,
                                             const at::Tensor& bias, const Conv2dGeometry& g,
                                             at::MemoryFormat result_format);

// The input gradient (any groups, at least one output channel): grad_output dense NCHW or NHWC,
// the weight contiguous, dtypes as for the forward. The result in grad_output's dtype and
// result_format.
at::Tensor channels_last_gemm_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                                const Conv2dGeometry& g, at::MemoryFormat result_format);

// The weight gradient (any groups, at least one input channel), input and grad_output dense
// NCHW or NHWC, of one dtype: (K, C / groups, kh, kw) in the type computed in.
at::Tensor channels_last_gemm_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                                 const Conv2dGeometry& g);

// A 1x1 stride-1 layer of one group on NHWC tensors is one matrix product of the pixels'
// channels, which the micro-kernel takes in place (no bands), where this CPU runs it, the dtype
// is float32 or float64 and the product's columns (output channels for the forward, input
// channels for the input gradient) fill whole panels.
bool channels_last_pointwise_applies(int64_t columns, at::ScalarType dtype);

// Its forward and input gradient: tensors of one such dtype, the results channels_last.
at::Tensor channels_last_pointwise_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                           const Conv2dGeometry& g);
at::Tensor channels_last_pointwise_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                              const Conv2dGeometry& g);

}  // namespace conv_ext
