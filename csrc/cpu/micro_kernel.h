// The register-blocked micro-kernel that the implicit GEMM and the Winograd GEMMs share:
// y (+)= a . panels for a tile of rows of a and one or two packed panels of kPanelWidth columns,
// the tile's output in registers over the whole depth. Compiled for AVX-512, AVX2+FMA and the
// baseline; micro_kernel_for_this_cpu picks one at run time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace conv_ext {

// Columns of a packed panel: one 64-byte cache line, 16 float32 or 8 float64.
template <typename scalar_t>
constexpr int64_t kPanelWidth = 64 / sizeof(scalar_t);

// The most rows, panels and depth (MicroKernel::depth) of any build.
constexpr int kMaxMicroKernelRows = 12, kMaxMicroKernelPanels = 2;
constexpr int64_t kMaxMicroKernelDepth = 1024;

// How the micro-kernel writes its tile of y: over it, adding to it, or over it with
// non-temporal stores, which skip reading y's lines into cache first (for outputs far larger than
// the cache, written once: y's tile and y_row must then be 64-byte aligned; callers fence with
// _mm_sfence before other threads read y).
enum class Write { store, add, stream };

// Outputs larger than a core's L2 are written with non-temporal stores where a kernel writes
// them whole, sparing the reads of lines about to be overwritten (measured with AVX-512: the
// implicit GEMM's stem at batch 8 1.2x faster, at batch 1 (3.2 MB) 1.1x, 1x1 64->256
// 1.1-1.15x; 1.6 MB alike).
constexpr int64_t kStreamBytes = int64_t{2} << 20;
inline bool streams(const at::Tensor& output) {
  return output.numel() * static_cast<int64_t>(output.element_size()) > kStreamBytes;
}

// Whether rows of `elements` values apart, read in place as the micro-kernel's operand, lie a
// multiple of 4 KiB apart: L1 holds 4 KiB per way, so a tile's rows all fall into one set of it
// and evict one another; the callers pack such rows instead.
template <typename scalar_t>
bool rows_share_l1_set(int64_t elements) {
  return elements * int64_t{sizeof(scalar_t)} % 4096 == 0;
}

// Where the micro-kernel's sums start unless it adds to y: zero, or a bias per row of its tile
// (the implicit GEMM's output channels) or per column (the channels-last products' ones, at
// values + j for the tile's column j).
template <typename scalar_t>
struct Bias {
  const scalar_t* values = nullptr;
  bool per_column = false;
};

// y's tile of `rows` (<= the kernel's rows) x `panels` (the kernel's panels, or 1) panels:
// y (+)= a . panels over depth, where row i of a (a_row apart) holds channel i's values, or with
// a_row = 0 a is packed (step k's values of the rows at a + k * rows of the kernel). Panel p's
// step k holds kPanelWidth columns at panel + p * panel_step + k * kPanelWidth (packed). Given
// taps, the operand read in place takes its step k at taps[k]: with a packed the panels, at
// panel + p * panel_step + taps[k]; else a's rows, row i's value at a + i * a_row + taps[k].
// Panel p's columns go to y + p * kPanelWidth. Starting from the bias unless adding.
template <typename scalar_t>
struct MicroKernel {
  int rows, panels;  // the tile that fills the registers
  // The rows that fill them with one panel, its operand a read in place (not packed): AVX-512's
  // 16 of its 32 registers. Products of one panel (the 16 channels of a ResNeXt group) had run
  // in the two-panel kernel's 12 rows or fewer (7 + 7 for 14 pixels), too few sums in flight to
  // hide the FMAs' latency (measured with AVX-512, 3x3/2 512 @28 with 16 channels per group:
  // forward and input gradient 1.1x faster at batch 8, 1.05-1.1x at batch 1).
  int one_panel_rows;
  // Depth of the blocks a caller should pass: deep blocks mean fewer passes that load and store
  // the output, but beyond this the panels fall out of L1 (measured per build: AVX2 1024, 5-10%
  // faster than 256; AVX-512, whose FMAs want twice the bytes per cycle, 256: 147 GFLOP/s on one
  // core against 99 at 1024).
  int64_t depth;
  void (*run)(int rows, int panels, int64_t depth, const scalar_t* a, int64_t a_row,
              const scalar_t* panel, int64_t panel_step, const int64_t* taps, Bias<scalar_t> bias,
              Write write, scalar_t* y, int64_t y_row);

  // The most rows of a tile for a product of `panels` panels in all, a read in place.
  int rows_in_place(int64_t panels) const { return panels == 1 ? one_panel_rows : rows; }
};

template <typename scalar_t>
MicroKernel<scalar_t> micro_kernel_for_this_cpu();

// Winograd's products, on this CPU's micro-kernel: P[e] (+)= V[e] U[e] for the transforms'
// `elements` elements of a chunk of `count` tiles, (count x C) times (C x K), V's rows (v_row
// apart) read in place, U in packed panels (element planes u_stride apart); P's rows are padded
// to whole panels. Adding to P, or over it.
template <typename scalar_t>
void multiply_by_filters(int64_t elements, const scalar_t* v, int64_t v_row, const scalar_t* u, int64_t u_stride,
                         scalar_t* p, int64_t count, int64_t C, int64_t panels, bool add);

// The weight gradient's: S[e] (+)= W[e]^T V[e] for the elements: `rows` columns of W (count x
// w_row) times V (count x C) in packed panels, (elements, C's panels, count, W), zero past C,
// its elements v_element apart; S is (elements, rows, s_row), s_row at least C's panels times W,
// its elements s_element apart.
template <typename scalar_t>
void multiply_tiles_transposed(int64_t elements, const scalar_t* w, int64_t w_row, int64_t rows, const scalar_t* packed_v,
                               int64_t v_element, int64_t C, int64_t count, Write write, scalar_t* s, int64_t s_row,
                               int64_t s_element);

}  // namespace conv_ext
