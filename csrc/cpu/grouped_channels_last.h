// Grouped layers of 4, 8 or 16 channels a group (ResNeXt's) at stride 1 on NHWC tensors, as a
// model in channels_last holds them. The NCHW group kernel needs the input moved to NCHW and its
// output back, each a transpose of the whole tensor; here a group's output channels are whole
// vectors (two groups a vector with 4 float32 channels) and each input channel of a pixel a
// broadcast, read from a zero-padded band of the group's channels.
#pragma once

#include "../conv2d.h"

#include <ATen/core/Tensor.h>

namespace conv_ext {

// Whether grouped_channels_last_forward takes this layer and input: more than one group, as many
// input as output channels a group, 4, 8 or 16 of them (4 float32 ones in an even number of
// groups), stride 1, an NHWC input (suggested channels_last) of float32 or float64 (float16 and
// bfloat16 widened to float32 first), in the vector builds.
bool grouped_channels_last_applies(const Conv2dGeometry& g, const at::Tensor& input);

// The forward of such a layer, any kernel, padding and dilation: input dense NHWC of float32 or
// float64, weight dense NCHW or NHWC (out_channels, channels a group, R, S) of its dtype, read as
// given or (order) flipped and transposed within each group, as the stride-1 input gradient's
// forward reads the layer's (with no copy of an NHWC weight), bias (out_channels) or undefined;
// the output NHWC.
at::Tensor grouped_channels_last_forward(const at::Tensor& input, const at::Tensor& weight, FilterOrder order,
                                         const at::Tensor& bias, const Conv2dGeometry& g);

// The weight gradient of such a layer (NHWC, channels_last): input and grad_output dense NHWC of
// float32 or float64. Tasks set by the layer (runs of the images' bands of rows) sum their own
// parts, added in order after: the same sums whatever the threads.
at::Tensor grouped_channels_last_grad_weight(const at::Tensor& input, const at::Tensor& grad_output,
                                             const Conv2dGeometry& g);

}  // namespace conv_ext
