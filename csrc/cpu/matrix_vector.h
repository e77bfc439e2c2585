// The matrix-vector products of 1x1 layers on one image's single pixel (single_pixel_product in
// conv2d_cpu.cpp: a squeeze-excitation's layers, a classifier head as a 1x1 layer): the filters m
// as (out_channels, in_channels), the forward m x + bias and the input gradient m^T y. Each reads
// m once, so memory bounds them; both split m among the threads, and every sum is made by one
// thread in a fixed order (deterministic). On AVX2 (the builds that ask: use_avx2()).
#pragma once

#include <ATen/core/Tensor.h>

namespace conv_ext {

// m x (+ bias) for m (rows, cols), x (cols) and bias (rows) or undefined; float32 or float64.
at::Tensor matrix_times_vector(const at::Tensor& m, const at::Tensor& x, const at::Tensor& bias);

// m^T y for m (rows, cols) and y (rows); float32 or float64.
at::Tensor matrix_transposed_times_vector(const at::Tensor& m, const at::Tensor& y);

}  // namespace conv_ext
