// bfloat16 convolutions on units that multiply pairs of bfloat16 into float32: AMX's tiles on
// Intel's Xeons since Sapphire Rapids (16 x 32 products summed into 16 x 16 accumulators per
// instruction, sixteen times an AVX-512 FMA's), or AVX512_BF16's dot products on vectors (AMD's
// Zen 4 and later: each float32 lane sums two products, twice an FMA's).
// Every sum accumulates in float32 and the result is rounded to bfloat16 once, as on the float32
// paths.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// Whether the pair kernels run this convolution: a CPU with AVX512_BF16 (and AMX-BF16 whose
// kernel lets this process use the tiles, for the tiles), the AVX-512 build (CONV_EXT_CPU_ISA),
// and at least 16 input and output channels per group (below that most of each tile would
// multiply zeros).
bool bf16_pairs_conv2d_applies(const Conv2dGeometry& g);

// Whether they run on AMX's tiles (else on AVX512_BF16's vectors), where they apply.
bool bf16_pairs_on_tiles();

// The forward in NCHW bfloat16 from contiguous NCHW bfloat16 input and weight (read in the
// given order); bias (any floating dtype) may be undefined.
at::Tensor bf16_pairs_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, FilterOrder order,
                                     const at::Tensor& bias, const Conv2dGeometry& g);

// The weight gradient in float32 (rounded by the caller) from contiguous NCHW bfloat16 input
// and grad_output, where bf16_pairs_conv2d_applies.
at::Tensor bf16_pairs_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output, const Conv2dGeometry& g);

}  // namespace conv_ext
