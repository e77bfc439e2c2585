// The forward convolution as an implicit GEMM over channels-last bands: output (pixels x
// channels) = input (pixels x patch, read in place from a zero-padded, channels-innermost band
// of the input's rows) times the filters (patch x channels, packed once per call), on the
// micro-kernel of micro_kernel.h with its rows as output pixels and its panels as output
// channels. No panel of the input is copied, whatever the stride: for the strided layers,
// whose short output rows make implicit_gemm_conv2d.cpp pack its panels.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// Whether this CPU runs it (AVX2+FMA, unless CONV_EXT_CPU_ISA=generic).
bool channels_last_gemm_available();

// The forward (any groups, at least one input channel) from float32 or float64 operands: the
// input dense NCHW or NHWC, the weight contiguous, bias possibly undefined. The result in
// result_format.
at::Tensor channels_last_gemm_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& bias, const Conv2dGeometry& g,
                                             at::MemoryFormat result_format);

// The input gradient (any groups, at least one output channel) from float32 or float64 operands:
// grad_output dense NCHW or NHWC, the weight contiguous. The result in result_format.
at::Tensor channels_last_gemm_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                                const Conv2dGeometry& g, at::MemoryFormat result_format);

// The weight gradient (any groups, at least one input channel) from float32 or float64 operands,
// input and grad_output dense NCHW or NHWC: (K, C / groups, kh, kw).
at::Tensor channels_last_gemm_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                                 const Conv2dGeometry& g);

}  // namespace conv_ext
