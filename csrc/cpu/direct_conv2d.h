// Direct CPU kernels (no im2col, no GEMM) for convolutions with few channels per group:
// depthwise and narrow grouped layers, where a GEMM per group is too small to pay off.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// Whether the direct kernels beat a GEMM for this geometry.
bool direct_pays_off(const Conv2dGeometry& g);

// The three operators' results (contiguous; float32 or float64 operands, contiguous).
at::Tensor direct_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const at::Tensor& bias, const Conv2dGeometry& g);
// Any stride; conv2d_cpu.cpp sends stride 1 through the forward kernel instead.
at::Tensor direct_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                    const Conv2dGeometry& g);
at::Tensor direct_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                     const Conv2dGeometry& g);

}  // namespace conv_ext
