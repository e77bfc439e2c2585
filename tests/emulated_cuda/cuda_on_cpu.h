// Runs conv_ext's CUDA kernels on the CPU, so that the tests check them where there is no GPU.
// A launch runs its blocks one after another; a block's threads are fibers (ucontext) on the
// calling thread, each running until its next __syncthreads() before the next one starts, and a
// barrier is passed once every thread has reached it. __shared__ variables become function
// statics, which a block's threads therefore share. Running each thread alone up to the barrier
// is the schedule that a missing barrier fails under: a thread that reads shared memory before
// the others wrote it, or overwrites what they have yet to read, gives a wrong result every time.
// Tensor cores (wmma) compute as the API defines them on whole matrices: each thread of a warp
// holds the whole fragment (the real layout is opaque to the kernels), and loads and stores check
// the alignment the GPU requires. It checks what the kernels compute (indexing, masking,
// barriers), not their speed nor the GPU's memory model.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#define CONV_EXT_EMULATED_CUDA

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};

namespace emulated_cuda {

inline dim3 thread_idx, block_idx, block_dim, grid_dim;

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  dim3 index;
  bool done = false;
};

inline ucontext_t scheduler;
inline Fiber* running = nullptr;
inline const std::function<void()>* body = nullptr;

inline void sync_threads() { swapcontext(&running->context, &scheduler); }

inline void fiber_main() {
  (*body)();
  running->done = true;  // returning resumes uc_link, the scheduler
}

// Runs body as each thread of one block of `block` threads.
inline void run_block(dim3 block, const std::function<void()>& kernel_body) {
  constexpr size_t kStack = 256 * 1024;
  const unsigned threads = block.x * block.y * block.z;
  std::vector<Fiber> fibers(threads);
  body = &kernel_body;
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = fibers[t];
    f.stack.reset(new char[kStack]);
    f.index = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStack;
    f.context.uc_link = &scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  for (unsigned finished = 0; finished < threads;) {  // one pass: every thread to its next barrier
    finished = 0;
    for (Fiber& f : fibers) {
      if (!f.done) {
        running = &f;
        thread_idx = f.index;
        swapcontext(&scheduler, &f.context);
      }
      finished += f.done;
    }
    if (finished != 0 && finished != threads) {
      throw std::logic_error("some threads of a block returned while others wait at a barrier");
    }
  }
}

// The kernel launcher of tiled_gemm.cuh's run_tiled_gemm.
struct Launch {
  template <typename Kernel, typename... Arguments>
  void operator()(Kernel kernel, dim3 grid, dim3 block, Arguments... arguments) const {
    grid_dim = grid;
    block_dim = block;
    const std::function<void()> kernel_body = [&] { kernel(arguments...); };
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          block_idx = dim3(x, y, z);
          run_block(block, kernel_body);
        }
  }
};

}  // namespace emulated_cuda

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline __half __float2half(float v) { return __half(v); }
inline __nv_bfloat16 __float2bfloat16(float v) { return __nv_bfloat16(v); }

namespace nvcuda {
namespace wmma {

// cvt.rna.tf32.f32: the 10-bit mantissa rounded to nearest, ties away from zero.
inline float __float_to_tf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &bits, sizeof bits);
  return v;
}

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

// The whole rows x cols matrix, row-major, in every thread that holds the fragment.
template <typename Use, int m, int n, int k, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? k : m;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? k : n;
  static constexpr int num_elements = rows * cols;
  using element_type = std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>;
  element_type x[num_elements];
};

// What the GPU requires of a matrix in memory: a 256-bit aligned start, rows 16 bytes apart.
template <typename Element>
void check_matrix_address(const Element* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) throw std::logic_error("wmma: a matrix not 256-bit aligned");
  if (ldm * sizeof(Element) % 16 != 0) throw std::logic_error("wmma: ldm not a multiple of 16 bytes");
}

template <typename Use, int m, int n, int k, typename T, typename Layout, typename Element>
void load_matrix_sync(fragment<Use, m, n, k, T, Layout>& f, const Element* p, unsigned ldm,
                      layout_t layout = std::is_same_v<Layout, col_major> ? mem_col_major : mem_row_major) {
  check_matrix_address(p, ldm);
  using F = fragment<Use, m, n, k, T, Layout>;
  for (int i = 0; i < F::rows; ++i)
    for (int j = 0; j < F::cols; ++j)
      f.x[i * F::cols + j] = layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
}

template <int m, int n, int k, typename Element>
void store_matrix_sync(Element* p, const fragment<accumulator, m, n, k, Element>& f, unsigned ldm, layout_t layout) {
  check_matrix_address(p, ldm);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.x[i * n + j];
}

template <typename F, typename V>
void fill_fragment(F& f, V v) {
  for (auto& e : f.x) e = v;
}

// d = a b + c, each product summed in float (exact for the reduced-precision operands).
template <int m, int n, int k, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, m, n, k, float>& d, const fragment<matrix_a, m, n, k, T, LayoutA>& a,
              const fragment<matrix_b, m, n, k, T, LayoutB>& b, const fragment<accumulator, m, n, k, float>& c) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float sum = c.x[i * n + j];
      for (int l = 0; l < k; ++l) sum += static_cast<float>(a.x[i * k + l]) * static_cast<float>(b.x[l * n + j]);
      d.x[i * n + j] = sum;
    }
}

}  // namespace wmma
}  // namespace nvcuda

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __syncthreads() emulated_cuda::sync_threads()
#define threadIdx emulated_cuda::thread_idx
#define blockIdx emulated_cuda::block_idx
#define blockDim emulated_cuda::block_dim
#define gridDim emulated_cuda::grid_dim
