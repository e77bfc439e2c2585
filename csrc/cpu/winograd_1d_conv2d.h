// Winograd's minimal filtering along one dimension (Lavin & Gray 2016) for the 1 x R and R x 1
// kernels of stride 1 that factorised layers use (Inception's 1x7, 7x1, 1x3 and 3x1): F(M, R)
// makes M outputs of a row (or a column) from a block of N = M + R - 1 inputs through N
// products per channel pair instead of M * R. F(4, 3) (2x fewer), F(4, 5) (2.5x) and F(2, 7)
// (1.75x). The products, summed over channels, run as N GEMMs on the micro-kernel; the
// transforms vectorise across channels. The weight gradient runs the same algorithm in adjoint
// form.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// Whether the algorithm computes this geometry: a 1 x R or R x 1 kernel with R 3, 5 or 7, stride
// 1, dilation 1, one group, in the vector builds.
bool winograd_1d_applies(const Conv2dGeometry& g);

// Whether it is the fastest CPU algorithm for a geometry it applies to: for the forward (and so
// the stride-1 input gradient), and for the weight gradient.
bool winograd_1d_pays_off(const Conv2dGeometry& g);
bool winograd_1d_grad_weight_pays_off(const Conv2dGeometry& g);

// Input dense NCHW or NHWC, float64, float32, float16 or bfloat16; the weight and bias
// contiguous, in the type the kernels compute in (float32 for float16 and bfloat16, which are
// widened as read), the weight read in the given order. The result in the input's dtype and the
// given layout, rounded once.
at::Tensor winograd_1d_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, FilterOrder order,
                                      const at::Tensor& bias, const Conv2dGeometry& g,
                                      at::MemoryFormat output_format);

// The weight gradient: input and grad_output dense NCHW or NHWC, of one dtype as above; the
// result (K, C, 1, R) or (K, C, R, 1), contiguous, in the type computed in. Its sums are the same
// whatever the threads.
at::Tensor winograd_1d_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                          const Conv2dGeometry& g);

}  // namespace conv_ext
