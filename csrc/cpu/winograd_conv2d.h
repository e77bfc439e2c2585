// Winograd F(4x4, 3x3) for 3x3 convolutions with stride 1 (Lavin & Gray 2016): each 4x4 block of
// output comes from a 6x6 block of input through 36 element-wise products per channel pair
// instead of 144, the products summed over channels as 36 GEMMs.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// Whether the algorithm computes this geometry at all (3x3, stride 1, dilation 1, one group).
bool winograd_applies(const Conv2dGeometry& g);

// Whether it is the fastest CPU algorithm for a geometry it applies to.
bool winograd_pays_off(const Conv2dGeometry& g);

// The forward result in the given layout (float32 or float64 operands; the input dense in NCHW
// or NHWC order, the weight contiguous).
at::Tensor winograd_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                   const at::Tensor& bias, const Conv2dGeometry& g,
                                   at::MemoryFormat output_format);

}  // namespace conv_ext
