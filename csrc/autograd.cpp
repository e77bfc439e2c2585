// Autograd kernels of the conv_ext operators, for every device. They are in C++, as
// torchvision's are, because a Python autograd kernel (torch.library.register_autograd) cost
// ~12 us per call, twice PyTorch's whole F.conv2d on a small layer.
//
// The derivatives follow from bilinearity: with the convolution's hyper-parameters fixed, write
// y = F(x, w). Then, with g the incoming gradient,
//
//     y  = F(x, w)       dL/dx = GI(g, w)    dL/dw = GW(x, g)    dL/db = sum of g
//     gx = GI(gy, w)     dL/dgy = F(g, w)    dL/dw = GW(g, gy)
//     gw = GW(x, gy)     dL/dx = GI(gy, g)   dL/dgy = F(x, g)
//
// and for complex operands the same with the saved operand conjugated (dL/dx = GI(g, conj(w)),
// as PyTorch's complex gradients are the conjugate Wirtinger derivatives).
//
// Every backward calls the ops through the dispatcher, so they are differentiable again:
// derivatives of any order exist. conv2d's calls conv2d_backward, which is the three ops' calls
// wherever a gradient is recorded through it.
#include "conv2d.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace conv_ext {
namespace {

using at::IntArrayRef;
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What every backward needs: the op's two tensors and the hyper-parameters after its size.
struct Saved {
  Tensor first, second;
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;

  static void save(AutogradContext* ctx, const Tensor& first, const Tensor& second, IntArrayRef stride,
                   IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
    ctx->save_for_backward({first, second});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
  }
  // The tensors conjugated: every backward takes the adjoint of a bilinear op in one operand,
  // which for complex operands is the real formula's with the other operand conjugated (for
  // real ones conj() is the tensor itself).
  static Saved load(AutogradContext* ctx) {
    const auto tensors = ctx->get_saved_variables();
    return {tensors[0].conj(), tensors[1].conj(), ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
            ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt()};
  }
};

// The gradients of the arguments after the two tensors (the bias, if any, comes first).
variable_list with_no_more_grads(Tensor first, Tensor second, Tensor bias = Tensor()) {
  return {std::move(first), std::move(second), std::move(bias), Tensor(), Tensor(), Tensor(), Tensor()};
}

// The spatial sizes (dims 2 and 3) of a saved tensor, symbolic under torch.compile.
c10::SymIntArrayRef spatial_size(const Tensor& t) { return t.sym_sizes().slice(2); }

class Conv2d : public torch::autograd::Function<Conv2d> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                        const std::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                        IntArrayRef dilation, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Saved::save(ctx, input, weight, stride, padding, dilation, groups);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return conv2d_op(input, weight, bias, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = Saved::load(ctx);
    const bool bias = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    auto [grad_input, grad_weight, grad_bias] =
        conv2d_backward_op(grads[0], s.first, s.second, s.stride, s.padding, s.dilation, s.groups,
                           {ctx->needs_input_grad(0), ctx->needs_input_grad(1), bias});
    return with_no_more_grads(grad_input, grad_weight, grad_bias);
  }
};

class Conv2dGradInput : public torch::autograd::Function<Conv2dGradInput> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& grad_output, const Tensor& weight,
                        c10::SymIntArrayRef input_size, IntArrayRef stride, IntArrayRef padding,
                        IntArrayRef dilation, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Saved::save(ctx, grad_output, weight, stride, padding, dilation, groups);
    return grad_input_op(grad_output, weight, input_size, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = Saved::load(ctx);
    const Tensor &grad_output = s.first, &weight = s.second, &grad = grads[0];
    Tensor d_grad_output, d_weight;
    if (ctx->needs_input_grad(0)) {
      d_grad_output = conv2d_op(grad, weight, std::nullopt, s.stride, s.padding, s.dilation, s.groups);
    }
    if (ctx->needs_input_grad(1)) {
      d_weight = grad_weight_op(grad, grad_output, spatial_size(weight), s.stride, s.padding, s.dilation, s.groups);
    }
    return with_no_more_grads(d_grad_output, d_weight);
  }
};

class Conv2dGradWeight : public torch::autograd::Function<Conv2dGradWeight> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& grad_output,
                        c10::SymIntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                        IntArrayRef dilation, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Saved::save(ctx, input, grad_output, stride, padding, dilation, groups);
    return grad_weight_op(input, grad_output, kernel_size, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = Saved::load(ctx);
    const Tensor &input = s.first, &grad_output = s.second, &grad = grads[0];
    Tensor d_input, d_grad_output;
    if (ctx->needs_input_grad(0)) {
      d_input = grad_input_op(grad_output, grad, spatial_size(input), s.stride, s.padding, s.dilation, s.groups);
    }
    if (ctx->needs_input_grad(1)) {
      d_grad_output = conv2d_op(input, grad, std::nullopt, s.stride, s.padding, s.dilation, s.groups);
    }
    return with_no_more_grads(d_input, d_grad_output);
  }
};

// Whether a call has a gradient to record: grad mode on and an operand that requires one, or an
// operand with a forward-mode tangent (which the Function refuses with a message, rather than
// let the direct call drop it). Calls without run the op directly, as PyTorch's own autograd
// kernels do: an autograd Function's context and saved data cost ~2 us a call (a tiny layer's
// forward 1.3x slower).
bool records_grad(const Tensor& first, const Tensor& second, const std::optional<Tensor>& bias = std::nullopt) {
  const auto records = [](const Tensor& t) {
    return t.defined() && ((at::GradMode::is_enabled() && t.requires_grad()) || t._fw_grad(/*level=*/0).defined());
  };
  return records(first) || records(second) || (bias.has_value() && records(*bias));
}

Tensor conv2d_autograd(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                       IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  if (!records_grad(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv2d_op(input, weight, bias, stride, padding, dilation, groups);
  }
  return Conv2d::apply(input, weight, bias, stride, padding, dilation, groups);
}

Tensor conv2d_grad_input_autograd(const Tensor& grad_output, const Tensor& weight, c10::SymIntArrayRef input_size,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  if (!records_grad(grad_output, weight)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return grad_input_op(grad_output, weight, input_size, stride, padding, dilation, groups);
  }
  return Conv2dGradInput::apply(grad_output, weight, input_size, stride, padding, dilation, groups);
}

Tensor conv2d_grad_weight_autograd(const Tensor& input, const Tensor& grad_output, c10::SymIntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  if (!records_grad(input, grad_output)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return grad_weight_op(input, grad_output, kernel_size, stride, padding, dilation, groups);
  }
  return Conv2dGradWeight::apply(input, grad_output, kernel_size, stride, padding, dilation, groups);
}

// conv2d_backward: where it has a gradient to record (a double backward), the three ops' calls,
// each recorded by its own kernel above; else the op, which a backend may compute in one pass.
std::tuple<Tensor, Tensor, Tensor> conv2d_backward_autograd(const Tensor& grad_output, const Tensor& input,
                                                            const Tensor& weight, IntArrayRef stride, IntArrayRef padding,
                                                            IntArrayRef dilation, int64_t groups,
                                                            std::array<bool, 3> output_mask) {
  if (!records_grad(grad_output, input, weight)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv2d_backward_op(grad_output, input, weight, stride, padding, dilation, groups, output_mask);
  }
  return conv2d_backward_by_three_ops(grad_output, input, weight, stride, padding, dilation, groups, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(conv_ext, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv2d_grad_input", &conv2d_grad_input_autograd);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight_autograd);
  m.impl("conv2d_backward", &conv2d_backward_autograd);
}

}  // namespace conv_ext
