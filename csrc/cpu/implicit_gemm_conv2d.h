// The forward convolution as an implicit GEMM: output (channels x pixels) = filters (channels x
// patch) times the im2col matrix (patch x pixels), whose panels are packed straight from the
// image into cache instead of being materialised, and multiplied by a register-blocked AVX2
// micro-kernel. Any kernel size, stride, padding, dilation and groups.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// Whether this CPU runs it (AVX2+FMA, unless CONV_EXT_CPU_ISA=generic); otherwise the GEMM
// path materialises im2col tiles and multiplies them with at::bmm.
bool implicit_gemm_available();

// The forward in NCHW from contiguous NCHW operands (bias may be undefined), float32 or
// float64.
at::Tensor implicit_gemm_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                        const at::Tensor& bias, const Conv2dGeometry& g);

// dst[j] = row[first + j * step] for j < count, zero where that column lies outside [0, width):
// one row of im2col. The widest version this CPU runs (whole vectors at steps 1 and 2 with AVX2
// or AVX-512), to be looked up once per loop over rows.
template <typename scalar_t>
using GatherRow = void (*)(const scalar_t* row, int64_t width, int64_t first, int64_t step, int64_t count,
                           scalar_t* dst);
template <typename scalar_t>
GatherRow<scalar_t> row_gatherer();

}  // namespace conv_ext
