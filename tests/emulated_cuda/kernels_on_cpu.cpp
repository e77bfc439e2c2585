// The CUDA backend's kernels, run on the CPU by cuda_on_cpu.h, as the three ops on CPU tensors
// (contiguous, NCHW) with a chosen number of multiprocessors (which sets how the work is split
// across blocks): the tiled GEMM (csrc/cuda/tiled_gemm.cuh), on the tensor cores or not, the
// depthwise kernels (csrc/cuda/depthwise.cuh), the direct ones (csrc/cuda/direct.cuh), and the
// channels-last tensor-core GEMM (csrc/cuda/channels_last_mma.cuh) on channels_last tensors.
// test_emulated_cuda.py compares them with torch.
// ATen and torch's pybind11 casters rather than torch/extension.h, whose C++ frontend the
// module does not use (it compiled in 43 s against 52).
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include "cuda_on_cpu.h"
#include "cuda/channels_last_mma.cuh"
#include "cuda/depthwise.cuh"
#include "cuda/direct.cuh"
#include "cuda/tiled_gemm.cuh"

namespace {

using at::Tensor;
using namespace conv_ext::tiled_gemm;

conv_ext::Conv2dGeometry geometry(at::IntArrayRef input, at::IntArrayRef weight, int64_t out_channels,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups) {
  auto out = [&](int d) {
    return (input[d + 2] + 2 * padding[d] - dilation[d] * (weight[d + 2] - 1) - 1) / stride[d] + 1;
  };
  return {input[0], input[1], input[2], input[3], out_channels, weight[2], weight[3], out(0), out(1),
          stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], groups};
}

// The GPU the plans are made for: its multiprocessors, and whether its tensor cores are used.
struct Gpu {
  int64_t multiprocessors;
  bool tensor_cores;
};

// Fills out with Problem's products by the plans the CUDA backend would make on the gpu; returns
// the first product's plan (tiles_m, tiles_n, splits).
template <template <typename> class Problem, typename... Inputs>
std::vector<int64_t> run(const conv_ext::Conv2dGeometry& g, const Gpu& gpu, const Tensor& out, const Inputs&... inputs) {
  const auto planned = plan_parts<Problem>(g, gpu.multiprocessors, gpu.tensor_cores);
  for (const auto& p : planned) {
    TORCH_CHECK(p.plan.fits(), "the tiled GEMM's grid does not fit");
    run_tiled_gemm<Problem>(p.plan, p.part, emulated_cuda::Launch{}, out, inputs...);
  }
  if (planned.empty()) return {};
  const GemmPlan& first = planned.front().plan;
  return {first.tiles_m, first.tiles_n, first.splits};
}

std::vector<int64_t> forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias,
                             std::vector<int64_t> stride, std::vector<int64_t> padding,
                             std::vector<int64_t> dilation, int64_t groups, int64_t multiprocessors, bool tensor_cores,
                             Tensor y) {
  const auto g = geometry(x.sizes(), w.sizes(), w.size(0), stride, padding, dilation, groups);
  return run<ForwardProblem>(g, {multiprocessors, tensor_cores}, y, x, w, bias.value_or(Tensor()));
}

std::vector<int64_t> grad_input(const Tensor& gy, const Tensor& w, std::vector<int64_t> stride,
                                std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                                int64_t multiprocessors, bool tensor_cores, Tensor gx) {
  const auto g = geometry(gx.sizes(), w.sizes(), w.size(0), stride, padding, dilation, groups);
  return run<GradInputProblem>(g, {multiprocessors, tensor_cores}, gx, gy, w);
}

std::vector<int64_t> grad_weight(const Tensor& x, const Tensor& gy, std::vector<int64_t> stride,
                                 std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                                 int64_t multiprocessors, bool tensor_cores, Tensor gw) {
  const auto g = geometry(x.sizes(), gw.sizes(), gw.size(0), stride, padding, dilation, groups);
  return run<GradWeightProblem>(g, {multiprocessors, tensor_cores}, gw, x, gy);
}

// The depthwise kernels' three ops; each returns how many blocks share a channel's (or tap's) work.
int64_t depthwise_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias,
                          std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
                          int64_t groups, int64_t multiprocessors, Tensor y) {
  const auto g = geometry(x.sizes(), w.sizes(), w.size(0), stride, padding, dilation, groups);
  return conv_ext::depthwise::run_forward(g, multiprocessors, emulated_cuda::Launch{}, y, x, w,
                                          bias.value_or(Tensor()));
}

int64_t depthwise_grad_input(const Tensor& gy, const Tensor& w, std::vector<int64_t> stride,
                             std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                             int64_t multiprocessors, Tensor gx) {
  const auto g = geometry(gx.sizes(), w.sizes(), w.size(0), stride, padding, dilation, groups);
  return conv_ext::depthwise::run_grad_input(g, multiprocessors, emulated_cuda::Launch{}, gx, gy, w);
}

int64_t depthwise_grad_weight(const Tensor& x, const Tensor& gy, std::vector<int64_t> stride,
                              std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                              int64_t multiprocessors, Tensor gw) {
  const auto g = geometry(x.sizes(), gw.sizes(), gw.size(0), stride, padding, dilation, groups);
  return conv_ext::depthwise::run_grad_weight(g, multiprocessors, emulated_cuda::Launch{}, gw, x, gy);
}

// The direct kernels' three ops.
void direct_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, std::vector<int64_t> stride,
                    std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups, Tensor y) {
  const auto g = geometry(x.sizes(), w.sizes(), w.size(0), stride, padding, dilation, groups);
  conv_ext::direct::run_forward(g, emulated_cuda::Launch{}, y, x, w, bias.value_or(Tensor()));
}

void direct_grad_input(const Tensor& gy, const Tensor& w, std::vector<int64_t> stride, std::vector<int64_t> padding,
                       std::vector<int64_t> dilation, int64_t groups, Tensor gx) {
  const auto g = geometry(gx.sizes(), w.sizes(), w.size(0), stride, padding, dilation, groups);
  conv_ext::direct::run_grad_input(g, emulated_cuda::Launch{}, gx, gy, w);
}

void direct_grad_weight(const Tensor& x, const Tensor& gy, std::vector<int64_t> stride, std::vector<int64_t> padding,
                        std::vector<int64_t> dilation, int64_t groups, Tensor gw) {
  const auto g = geometry(x.sizes(), gw.sizes(), gw.size(0), stride, padding, dilation, groups);
  conv_ext::direct::run_grad_weight(g, emulated_cuda::Launch{}, gw, x, gy);
}

// The channels-last tensor-core GEMMs' forward, input gradient (the first stride phase's plan) and
// weight gradient, on channels_last tensors (the weight gradient's in any layout), float32 as TF32
// or by 3xTF32; each returns its plan (tile, splits).
void check_channels_last(const Tensor& t) {
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), "the kernel reads and writes channels_last tensors");
}

std::vector<int64_t> plan_of(const conv_ext::channels_last_mma::Plan& plan) {
  return {static_cast<int64_t>(plan.tile), plan.splits};
}

std::vector<int64_t> mma_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias,
                                 std::vector<int64_t> stride, std::vector<int64_t> padding,
                                 std::vector<int64_t> dilation, int64_t groups, int64_t multiprocessors, bool tf32,
                                 Tensor y) {
  check_channels_last(x);
  check_channels_last(y);
  const auto g = geometry(x.sizes(), w.sizes(), w.size(0), stride, padding, dilation, groups);
  TORCH_CHECK(conv_ext::channels_last_mma::applies_forward(g, x.scalar_type()), "the kernel does not apply");
  return plan_of(conv_ext::channels_last_mma::run_layer_forward(g, multiprocessors, emulated_cuda::Launch{}, y, x, w,
                                                                bias.value_or(Tensor()), tf32));
}

std::vector<int64_t> mma_grad_input(const Tensor& gy, const Tensor& w, std::vector<int64_t> stride,
                                    std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                                    int64_t multiprocessors, bool tf32, Tensor gx, int64_t columns_budget) {
  check_channels_last(gy);
  check_channels_last(gx);
  const auto g = geometry(gx.sizes(), w.sizes(), w.size(0), stride, padding, dilation, groups);
  TORCH_CHECK(conv_ext::channels_last_mma::applies_grad_input(g, gy.scalar_type()), "the kernel does not apply");
  return plan_of(
      conv_ext::channels_last_mma::run_grad_input(g, multiprocessors, emulated_cuda::Launch{}, gx, gy, w, tf32,
                                                  columns_budget));
}

std::vector<int64_t> mma_grad_weight(const Tensor& x, const Tensor& gy, std::vector<int64_t> stride,
                                     std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                                     int64_t multiprocessors, bool tf32, Tensor gw) {
  check_channels_last(x);
  check_channels_last(gy);
  const auto g = geometry(x.sizes(), gw.sizes(), gw.size(0), stride, padding, dilation, groups);
  TORCH_CHECK(conv_ext::channels_last_mma::applies_grad_weight(g, x.scalar_type()), "the kernel does not apply");
  Tensor gw_krsc = at::empty({gw.size(0), gw.size(2), gw.size(3), gw.size(1)}, gw.options());
  const auto plan = conv_ext::channels_last_mma::run_grad_weight(g, multiprocessors, emulated_cuda::Launch{},
                                                                 gw_krsc, x, gy, tf32);
  gw.copy_(gw_krsc.permute({0, 3, 1, 2}));
  return plan_of(plan);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fills y; returns (tiles_m, tiles_n, splits)");
  m.def("grad_input", &grad_input, "fills gx; returns (tiles_m, tiles_n, splits)");
  m.def("grad_weight", &grad_weight, "fills gw; returns (tiles_m, tiles_n, splits)");
  m.def("depthwise_forward", &depthwise_forward, "fills y; returns the blocks per channel");
  m.def("depthwise_grad_input", &depthwise_grad_input, "fills gx; returns the blocks per channel");
  m.def("depthwise_grad_weight", &depthwise_grad_weight, "fills gw; returns the splits");
  m.def("direct_forward", &direct_forward, "fills y");
  m.def("direct_grad_input", &direct_grad_input, "fills gx");
  m.def("direct_grad_weight", &direct_grad_weight, "fills gw");
  m.def("mma_forward", &mma_forward, "fills y (channels_last); returns (tile, splits)");
  m.def("mma_grad_input", &mma_grad_input, "fills gx (channels_last); returns (tile, splits)", py::arg("gy"),
        py::arg("w"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
        py::arg("multiprocessors"), py::arg("tf32"), py::arg("gx"),
        py::arg("columns_budget") = conv_ext::channels_last_mma::kColumnsBudget);
  m.def("mma_grad_weight", &mma_grad_weight, "fills gw; returns (tile, splits)");
}
