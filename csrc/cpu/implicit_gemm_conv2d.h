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

// Output pixels [pixel_begin, pixel_end) (row-major within the image) of every output channel
// of one image, single-threaded: x points at the image (C x H x W), y at its output
// (K x OH x OW), weight at the contiguous filters; bias may be null. float32 and float64.
template <typename scalar_t>
void implicit_gemm_forward_pixels(const scalar_t* x, const scalar_t* weight, const scalar_t* bias,
                                  scalar_t* y, const Conv2dGeometry& g, int64_t pixel_begin,
                                  int64_t pixel_end);

}  // namespace conv_ext
