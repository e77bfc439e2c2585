// A stride-1 convolution dilated by (dh, dw) is dh * dw undilated ones: output pixel
// (p + dh * s, q + dw * t) reads only the input pixels (p + dh * i - pad_h, q + dw * j - pad_w),
// so each dilation phase (p, q) of the output is an undilated convolution, without padding, of
// that phase of the zero-padded input. With the phases as images of one batch, dilated layers
// run on the algorithms of undilated ones (Winograd), which the copies in and out repay.
#pragma once

#include "../conv2d.h"

namespace conv_ext {

// The undilated convolution of g's phases: batch * dh * dw images (image n's phase (p, q) at
// (n * dh + p) * dw + q), each ceil(out / d) outputs by ceil(out / d) + kernel - 1 inputs per
// dimension, no padding.
Conv2dGeometry undilated_geometry(const Conv2dGeometry& g);

// phases[(n, p, q), c, s, t] = t[n, c, p + dh * s - pad_h, q + dw * t - pad_w], zero outside, for
// s < rows and t < cols: the input (pad g's padding, rows and cols the undilated input's size) or
// grad_output (no padding, the undilated output's size) in phases. NCHW or NHWC, as t is.
at::Tensor split_into_dilation_phases(const at::Tensor& t, const Conv2dGeometry& g, int64_t pad_h, int64_t pad_w,
                                      int64_t rows, int64_t cols);

// The inverse for the output: out[n, k, i, j] = phases[(n, i % dh, j % dw), k, i / dh, j / dw]
// for i < out_h and j < out_w (g's output); out dense in NCHW or NHWC (images of a larger batch).
void join_dilation_phases(const at::Tensor& phases, const Conv2dGeometry& g, at::Tensor& out);

}  // namespace conv_ext
