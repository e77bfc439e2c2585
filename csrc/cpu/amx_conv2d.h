// The bfloat16 forward on AMX, the matrix units of Intel's Xeons since Sapphire Rapids: tiles
// of 16 x 32 bfloat16 products summed into 16 x 16 float32 accumulators, sixteen times the
// products per instruction of an AVX-512 FMA. Every sum accumulates in float32 and the result
// is rounded to bfloat16 once, as on the float32 paths.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// Whether the AMX kernels run this convolution: a CPU with AMX-BF16 whose kernel lets this
// process use the tiles, the AVX-512 build (CONV_EXT_CPU_ISA), and at least 16 input and output
// channels per group (below that most of each tile would multiply zeros).
bool amx_conv2d_applies(const Conv2dGeometry& g);

// The forward in NCHW bfloat16 from contiguous NCHW bfloat16 input and weight; bias (any
// floating dtype) may be undefined.
at::Tensor amx_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& bias, const Conv2dGeometry& g);

// The weight gradient in float32 (rounded by the caller) from contiguous NCHW bfloat16 input
// and grad_output, where amx_conv2d_applies.
at::Tensor amx_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output, const Conv2dGeometry& g);

}  // namespace conv_ext
