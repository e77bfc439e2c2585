// Winograd convolution (Lavin & Gray 2016) for 3x3 and 5x5 kernels with stride 1: F(4x4, 3x3)
// and F(2x2, 5x5) both compute a tile of output from a 6x6 block of input through 36
// element-wise products per channel pair (instead of 144 and 100), the products summed over
// channels as 36 GEMMs. The weight gradient runs the same algorithm in adjoint form.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// Whether the algorithm computes this geometry at all (3x3 or 5x5, stride 1, dilation 1, one
// group).
bool winograd_applies(const Conv2dGeometry& g);

// Whether it is the fastest CPU algorithm for a geometry it applies to: for the forward (and so
// the stride-1 input gradient), and for the weight gradient, which needs more tiles.
bool winograd_pays_off(const Conv2dGeometry& g);
bool winograd_grad_weight_pays_off(const Conv2dGeometry& g);

// Whether g's tiles, of which `outputs` outputs are wanted (g's own, or fewer where the others
// are thrown away), take at most half the multiplications of a direct convolution's outputs.
bool winograd_saves_products(const Conv2dGeometry& g, int64_t outputs);

// Input and grad_output float64, float32, float16 or bfloat16, dense in NCHW or NHWC order; the
// weight and bias contiguous, in the type the kernels compute in (float32 for float16 and
// bfloat16, which are widened as read). The forward's result comes in the input's dtype and the
// given layout, rounded once; the weight gradient contiguous, in the type computed in.
at::Tensor winograd_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, FilterOrder order,
                                   const at::Tensor& bias, const Conv2dGeometry& g,
                                   at::MemoryFormat output_format);
at::Tensor winograd_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                       const Conv2dGeometry& g);

}  // namespace conv_ext
