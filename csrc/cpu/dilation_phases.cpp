#include "dilation_phases.h"

#include <ATen/ceil_div.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace conv_ext {
namespace {

using at::ceil_div;
using at::Tensor;

// fn(bits) with bits a value of the unsigned type of the tensor's element size: the copies move
// elements without looking at them, whatever their dtype.
template <typename Fn>
void dispatch_by_element_size(const Tensor& t, Fn&& fn) {
  switch (t.element_size()) {
    case 2: return fn(uint16_t{});
    case 4: return fn(uint32_t{});
    case 8: return fn(uint64_t{});
    default: TORCH_CHECK(false, "conv_ext: no dilation phases for elements of ", t.element_size(), " bytes");
  }
}

// out[j] = in[step * j] and out[step * j] = in[j] for j < count: constant steps (no dilation,
// or 2, the most common) let the compiler vectorise the copies.
template <typename T>
void gather_every(const T* in, int64_t step, T* out, int64_t count) {
  if (step == 1) {
    std::copy(in, in + count, out);
  } else if (step == 2) {
    for (int64_t j = 0; j < count; ++j) out[j] = in[2 * j];
  } else {
    for (int64_t j = 0; j < count; ++j) out[j] = in[step * j];
  }
}

template <typename T>
void scatter_every(const T* in, int64_t step, T* out, int64_t count) {
  if (step == 1) {
    std::copy(in, in + count, out);
  } else if (step == 2) {
    for (int64_t j = 0; j < count; ++j) out[2 * j] = in[j];
  } else {
    for (int64_t j = 0; j < count; ++j) out[step * j] = in[j];
  }
}

// Rows of phases, or of the output, per task: enough to repay a task's start.
constexpr int64_t kRowsPerTask = 16;

}  // namespace

Conv2dGeometry undilated_geometry(const Conv2dGeometry& g) {
  Conv2dGeometry u = g;
  u.batch = g.batch * g.dilation_h * g.dilation_w;
  u.out_h = ceil_div(g.out_h, g.dilation_h), u.out_w = ceil_div(g.out_w, g.dilation_w);
  u.in_h = u.out_h + g.kernel_h - 1, u.in_w = u.out_w + g.kernel_w - 1;
  u.pad_h = u.pad_w = 0;
  u.dilation_h = u.dilation_w = 1;
  return u;
}

Tensor split_into_dilation_phases(const Tensor& t, const Conv2dGeometry& g, int64_t pad_h, int64_t pad_w,
                                  int64_t rows, int64_t cols) {
  const auto format = t.suggest_memory_format();
  const Tensor src_t = t.contiguous(format);
  const int64_t n_images = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
  const int64_t dh = g.dilation_h, dw = g.dilation_w;
  Tensor phases = at::empty({n_images * dh * dw, C, rows, cols}, t.options().memory_format(format));
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  // Per column phase q, the columns t of its rows inside the image, [first, second): those with
  // q + dw * t - pad_w in [0, W).
  std::vector<std::pair<int64_t, int64_t>> in_range(dw);
  for (int64_t q = 0; q < dw; ++q) {
    const int64_t begin = std::min(cols, std::max<int64_t>(0, ceil_div(pad_w - q, dw)));
    in_range[q] = {begin, std::max(begin, std::min(cols, ceil_div(W + pad_w - q, dw)))};
  }
  dispatch_by_element_size(t, [&](auto bits) {
    using bits_t = decltype(bits);
    const auto* src = static_cast<const bits_t*>(src_t.const_data_ptr());
    auto* dst = static_cast<bits_t*>(phases.mutable_data_ptr());
    // Row s of phase image (n, p, q), of channel c (NCHW) or of every channel (NHWC): input row
    // p + dh * s - pad_h, its columns in range (from phase q's, or none outside the image), zeros
    // elsewhere.
    const auto copy_row = [&](int64_t n, int64_t c, int64_t p, int64_t q, int64_t s) {
      const int64_t m = (n * dh + p) * dw + q;
      const bool inside = p + dh * s - pad_h >= 0 && p + dh * s - pad_h < H;
      const int64_t r = inside ? p + dh * s - pad_h : 0;
      const int64_t first_col = q - pad_w, t_begin = inside ? in_range[q].first : cols, t_end = inside ? in_range[q].second : cols;
      if (channels_last) {
        bits_t* out = dst + (m * rows + s) * cols * C;
        std::fill(out, out + t_begin * C, bits_t{0});
        for (int64_t j = t_begin; j < t_end; ++j) {
          std::memcpy(out + j * C, src + ((n * H + r) * W + first_col + dw * j) * C, C * sizeof(bits_t));
        }
        std::fill(out + t_end * C, out + cols * C, bits_t{0});
        return;
      }
      bits_t* out = dst + ((m * C + c) * rows + s) * cols;
      std::fill(out, out + t_begin, bits_t{0});
      gather_every(src + ((n * C + c) * H + r) * W + first_col + dw * t_begin, dw, out + t_begin, t_end - t_begin);
      std::fill(out + t_end, out + cols, bits_t{0});
    };
    if (channels_last) {
      at::parallel_for(0, phases.size(0) * rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t m = task / rows;
          copy_row(m / (dh * dw), 0, m / dw % dh, m % dw, task % rows);
        }
      });
      return;
    }
    // A task per input plane, which it reads in order, and a task per output plane below, whose
    // phases it reads in order (tasks of rows across every plane had taken 1.3-2x as long).
    at::parallel_for(0, n_images * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        for (int64_t p = 0; p < dh; ++p) {
          for (int64_t q = 0; q < dw; ++q) {
            for (int64_t s = 0; s < rows; ++s) copy_row(n, c, p, q, s);
          }
        }
      }
    });
  });
  return phases;
}

void join_dilation_phases(const Tensor& phases, const Conv2dGeometry& g, Tensor& out) {
  const auto format = out.suggest_memory_format();
  const Tensor src_t = phases.contiguous(format);
  const int64_t K = phases.size(1), rows = phases.size(2), cols = phases.size(3);
  const int64_t dh = g.dilation_h, dw = g.dilation_w, H = g.out_h, W = g.out_w;
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  std::vector<int64_t> row_length(dw);  // of column phase q's rows in the output
  for (int64_t q = 0; q < dw; ++q) row_length[q] = ceil_div(W - q, dw);
  dispatch_by_element_size(phases, [&](auto bits) {
    using bits_t = decltype(bits);
    const auto* src = static_cast<const bits_t*>(src_t.const_data_ptr());
    auto* dst = static_cast<bits_t*>(out.mutable_data_ptr());
    // Row i of image n, of channel k (NCHW) or of every channel (NHWC): row i / dh of phases
    // (n, i % dh, q), column j from phase q = j % dw's column j / dw.
    const auto copy_row = [&](int64_t n, int64_t k, int64_t i) {
      const int64_t first_phase = (n * dh + i % dh) * dw, s = i / dh;
      if (channels_last) {
        for (int64_t j = 0; j < W; ++j) {
          const bits_t* in = src + (((first_phase + j % dw) * rows + s) * cols + j / dw) * K;
          std::memcpy(dst + ((n * H + i) * W + j) * K, in, K * sizeof(bits_t));
        }
        return;
      }
      for (int64_t q = 0; q < dw; ++q) {
        const bits_t* in = src + (((first_phase + q) * K + k) * rows + s) * cols;
        scatter_every(in, dw, dst + ((n * K + k) * H + i) * W + q, row_length[q]);
      }
    };
    if (channels_last) {
      at::parallel_for(0, g.batch * H, kRowsPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) copy_row(task / H, 0, task % H);
      });
      return;
    }
    at::parallel_for(0, g.batch * K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        for (int64_t i = 0; i < H; ++i) copy_row(plane / K, plane % K, i);
      }
    });
  });
}

}  // namespace conv_ext
