// Direct CPU kernels (no im2col, no GEMM) for convolutions with few channels per group:
// depthwise and narrow grouped layers, where a GEMM per group is too small to pay off.
#pragma once

#include "../conv2d.h"

#include <array>

namespace conv_ext {

// Whether the direct kernels beat a GEMM for this geometry.
bool direct_pays_off(const Conv2dGeometry& g);

// Where the direct kernels take float16 and bfloat16 inputs as they are (computing in float32),
// converting them in the plane copies they make anyway: the forward of stride-1 depthwise
// layers (its output then in the input's dtype) and the stride-1 weight gradient (in float32).
// Elsewhere they take float32 copies.
bool direct_forward_reads_reduced(const Conv2dGeometry& g);
bool direct_grad_weight_reads_reduced(const Conv2dGeometry& g);

// The three operators' results (contiguous; float32 or float64 operands, contiguous, but see
// above).
at::Tensor direct_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const at::Tensor& bias, const Conv2dGeometry& g);
// Any stride; conv2d_cpu.cpp sends stride 1 through the forward kernel instead.
at::Tensor direct_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                    const Conv2dGeometry& g);
at::Tensor direct_conv2d_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                     const Conv2dGeometry& g);

// A row of a stride-2 layer's grad_output (ceil(length / 2) values) spread out to the stride-1
// layer's (length): the values at the even columns, zeros between. Both columns of a pair are
// written, so that the loop vectorises.
template <typename scalar_t>
void spread_row(const scalar_t* values, int64_t length, scalar_t* row) {
  for (int64_t j = 0; j < length / 2; ++j) {
    row[2 * j] = values[j];
    row[2 * j + 1] = scalar_t(0);
  }
  if (length % 2 == 1) row[length - 1] = values[length / 2];
}

// Whether the gradients of a depthwise 3x3 layer at stride 2 padded by 1 read its planes in
// place (the AVX2 build, float32 and float64: direct_conv2d_grad_input and _grad_weight, and
// direct_conv2d_backward where it spreads), rather than grad_output spread out as the stride-1
// layer's: the weight gradient with each input row split into its even and odd columns, the
// input gradient making them from grad_output's rows.
bool depthwise_stride_2_reads_planes(const Conv2dGeometry& g, at::ScalarType dtype);

// The kernels the vector builds' direct weight gradient reads as rows in place, float32 and
// float64 (grad_weight_rows_3x3): 3 x 3 with undilated rows; others sum over padded planes.
bool grad_weight_rows_3x3_apply(const Conv2dGeometry& g);

// Whether the direct weight gradient of a layer at stride 2 (undilated) sums over its input's
// four stride phases (grad_weight_planes_stride_2), as direct_conv2d_grad_weight and
// direct_conv2d_backward do where it applies: where no kernel of the build reads 3x3 rows.
bool stride_2_grad_weight_by_phases(const Conv2dGeometry& g);

// Whether direct_conv2d_backward takes a layer (g; t, its input gradient's geometry as a forward
// convolution): depthwise of stride 1, where the build has the kernels that read planes in place
// (float32 and float64; float16 and bfloat16 with AVX-512, 3x3 kernels padded by 1), and with
// channels for every thread.
bool direct_backward_fuses(const Conv2dGeometry& g, const Conv2dGeometry& t, at::ScalarType dtype);
// The input, weight and bias gradients of such a layer that output_mask asks for (the others
// undefined) in one pass over grad_output: per channel and image, the kernels of the input and
// the weight gradient and the bias gradient's sum read its plane while it is in L1, where the
// three ops read all of grad_output from memory each. Operands contiguous, the weight in the
// type computed in (float32 for float16 and bfloat16); the input gradient in grad_output's
// dtype, the others in the weight's. Where it spreads, grad_output is that of a stride-2 layer
// with g's gradients (its output ceil(in / 2) a side, conv2d_cpu.cpp's depthwise_backward_spreads),
// each plane spread out to g's output in a scratch plane in L1, zeros between its pixels (the
// depthwise 3x3 kernels skip its rows of zeros), but where depthwise_stride_2_reads_planes,
// whose kernels read the strided planes in place.
std::array<at::Tensor, 3> direct_conv2d_backward(const at::Tensor& input, const at::Tensor& grad_output,
                                                 const at::Tensor& weight, const Conv2dGeometry& g,
                                                 const Conv2dGeometry& t, std::array<bool, 3> output_mask,
                                                 bool spreads = false);

}  // namespace conv_ext
