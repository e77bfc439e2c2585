// Runs conv_ext's CUDA kernels on the CPU, so that the tests check them where there is no GPU.
// A launch runs its blocks one after another; a block's threads are fibers (own stacks) on the
// calling thread, each running until its next __syncthreads() before the next one starts, and a
// barrier is passed once every thread has reached it. __shared__ variables become function
// statics, which a block's threads therefore share. Running each thread alone up to the barrier
// is the schedule that a missing barrier fails under: a thread that reads shared memory before
// the others wrote it, or overwrites what they have yet to read, gives a wrong result every time.
// Tensor cores (wmma) compute as the API defines them on whole matrices: each thread of a warp
// holds the whole fragment (the real layout is opaque to the kernels), and loads and stores check
// the alignment the GPU requires. The warp-wide instructions of warp_mma.cuh (ldmatrix, mma.sync)
// move data between lanes in the fragment layouts the PTX ISA defines: each lane posts its operands,
// the block meets at a barrier, each lane takes its results, and they meet again (so a kernel must
// issue them uniformly across its block), and mma.sync adds as the tensor cores do (tensor_core_sum,
// below). cp.async copies land as late as the GPU may let them: at
// the cp.async.wait_group that requires them, so a read before its wait sees stale data. It checks
// what the kernels compute (indexing, masking, barriers), not their speed nor the GPU's memory
// model.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
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

// Switching to another stack: saves what a call must preserve (x86-64 System V: rbx, rbp,
// r12-r15, MXCSR's and the x87 unit's control words) on the running stack, stores its pointer in
// *save, and resumes the stack at `load`. swapcontext did the same plus two system calls for the
// signal mask on every switch, which took half the emulator's time.
extern "C" void emulated_cuda_switch(void** save, void* load);
asm(R"(
  .text
  .p2align 4
  .local emulated_cuda_switch
  .type emulated_cuda_switch, @function
emulated_cuda_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emulated_cuda_switch, .-emulated_cuda_switch
)");

struct Fiber {
  void* stack_pointer;  // where emulated_cuda_switch left it
  dim3 index;
  bool done = false;
};

// The fibers' stacks, kept from block to block: allocated anew, each block's first touch of them
// (page faults clearing 256 KB a thread) cost more time than the kernels.
inline std::vector<std::unique_ptr<char[]>> fiber_stacks;

inline void* scheduler = nullptr;  // the stack pointer of run_block's loop
inline Fiber* running = nullptr;
inline const std::function<void()>* body = nullptr;

inline void sync_threads() { emulated_cuda_switch(&running->stack_pointer, scheduler); }

inline unsigned linear_thread_index() {
  return thread_idx.x + block_dim.x * (thread_idx.y + block_dim.y * thread_idx.z);
}

// A thread's cp.async copies: the groups it committed, oldest first, and the one it is filling.
struct Copy {
  void* dst;
  const void* src;  // null: 16 zeros
};
struct AsyncCopies {
  std::deque<std::vector<Copy>> committed;
  std::vector<Copy> open;
};
inline std::vector<AsyncCopies> async_copies;  // per thread of the running block

// What the lanes of each warp post for a warp-wide instruction.
struct WarpExchange {
  uint32_t row[32][4];  // ldmatrix: the 16 bytes at each lane's row address
  uint32_t a[32][4], b[32][2];
};
inline std::vector<WarpExchange> warp_exchanges;  // per warp of the running block

[[noreturn]] inline void fiber_main() {
  (*body)();
  running->done = true;
  emulated_cuda_switch(&running->stack_pointer, scheduler);  // never resumed
  __builtin_unreachable();
}

// A stack that the first switch to it enters fiber_main on, as if called (rsp = 8 mod 16 there).
inline void* fiber_start(char* stack, size_t size) {
  auto top = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15});
  *--top = nullptr;  // fiber_main's return address: it never returns
  *--top = reinterpret_cast<void*>(&fiber_main);
  for (int saved = 0; saved < 6; ++saved) *--top = nullptr;  // the six registers
  uint32_t control[2] = {};
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(control[0]), "=m"(control[1]));
  std::memcpy(--top, control, sizeof control);
  return top;
}

// Runs body as each thread of one block of `block` threads.
inline void run_block(dim3 block, const std::function<void()>& kernel_body) {
  constexpr size_t kStack = 256 * 1024;
  const unsigned threads = block.x * block.y * block.z;
  std::vector<Fiber> fibers(threads);
  async_copies.assign(threads, {});
  warp_exchanges.assign((threads + 31) / 32, {});
  body = &kernel_body;
  while (fiber_stacks.size() < threads) fiber_stacks.emplace_back(new char[kStack]);
  for (unsigned t = 0; t < threads; ++t) {
    fibers[t].index = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
    fibers[t].stack_pointer = fiber_start(fiber_stacks[t].get(), kStack);
  }
  for (unsigned finished = 0; finished < threads;) {  // one pass: every thread to its next barrier
    finished = 0;
    for (Fiber& f : fibers) {
      if (!f.done) {
        running = &f;
        thread_idx = f.index;
        emulated_cuda_switch(&scheduler, f.stack_pointer);
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

inline float __uint_as_float(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
inline uint32_t __float_as_uint(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline __half __float2half(float v) { return __half(v); }
inline __nv_bfloat16 __float2bfloat16(float v) { return __nv_bfloat16(v); }

namespace conv_ext {
namespace warp_mma {

inline void cp_async_16(void* dst, const void* src, bool valid) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0)) {
    throw std::logic_error("cp.async: a 16-byte copy not 16-byte aligned");
  }
  emulated_cuda::async_copies[emulated_cuda::linear_thread_index()].open.push_back({dst, valid ? src : nullptr});
}

inline void cp_async_commit() {
  auto& copies = emulated_cuda::async_copies[emulated_cuda::linear_thread_index()];
  copies.committed.push_back(std::move(copies.open));
  copies.open.clear();
}

template <int pending>
void cp_async_wait() {
  auto& copies = emulated_cuda::async_copies[emulated_cuda::linear_thread_index()];
  for (; copies.committed.size() > pending; copies.committed.pop_front()) {
    for (const auto& c : copies.committed.front()) {
      if (c.src != nullptr) {
        std::memcpy(c.dst, c.src, 16);
      } else {
        std::memset(c.dst, 0, 16);
      }
    }
  }
}

inline emulated_cuda::WarpExchange& warp_exchange() {
  return emulated_cuda::warp_exchanges[emulated_cuda::linear_thread_index() / 32];
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) throw std::logic_error("ldmatrix: a row not 16-byte aligned");
  const unsigned lane = emulated_cuda::linear_thread_index() % 32;
  auto& exchange = warp_exchange();
  std::memcpy(exchange.row[lane], row, 16);  // read where this thread is: a missing barrier before shows
  emulated_cuda::sync_threads();
  for (unsigned j = 0; j < 4; ++j) r[j] = exchange.row[8 * j + lane / 4][lane % 4];
  emulated_cuda::sync_threads();
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) throw std::logic_error("ldmatrix: a row not 16-byte aligned");
  const unsigned lane = emulated_cuda::linear_thread_index() % 32;
  auto& exchange = warp_exchange();
  std::memcpy(exchange.row[lane], row, 16);
  emulated_cuda::sync_threads();
  for (unsigned j = 0; j < 4; ++j) {
    uint16_t pair[2];  // column lane / 4 of rows 2 (lane % 4) and the next
    for (unsigned i = 0; i < 2; ++i) {
      const char* row_bytes = reinterpret_cast<const char*>(exchange.row[8 * j + 2 * (lane % 4) + i]);
      std::memcpy(&pair[i], row_bytes + 2 * (lane / 4), 2);
    }
    r[j] = pair[0] | uint32_t{pair[1]} << 16;
  }
  emulated_cuda::sync_threads();
}

// Element i (0 or 1) of a register holding two 16-bit values, or the register as TF32.
template <typename scalar_t>
float operand(uint32_t word, int i) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    word &= 0xffffe000u;  // the tensor cores read 19 bits
    float v;
    std::memcpy(&v, &word, sizeof v);
    return v;
  } else {
    return static_cast<float>(scalar_t(static_cast<uint16_t>(word >> (16 * i)), scalar_t::from_bits()));
  }
}

// c plus the products, added as the tensor cores add (Fasi, Higham, Mikaitis and Pranesh, "Numerical
// behavior of NVIDIA tensor cores", 2021): the products exact, every term cut toward zero to 24 bits
// below the largest one's leading bit, the sum cut toward zero to a float32. Not IEEE's rounding
// to nearest: an accumulator that is much larger than the products drops their low bits every time.
inline float tensor_core_sum(float c, const double* products, int count) {
  double largest = std::fabs(c), exact = c;
  for (int k = 0; k < count; ++k) {
    largest = std::fmax(largest, std::fabs(products[k]));
    exact += products[k];
  }
  if (largest == 0 || !std::isfinite(largest)) return static_cast<float>(exact);  // IEEE's infinities and NaNs
  const double unit = std::ldexp(1.0, std::ilogb(largest) - 23);
  double sum = std::trunc(c / unit) * unit;
  for (int k = 0; k < count; ++k) sum += std::trunc(products[k] / unit) * unit;  // exact: few bits
  float rounded = static_cast<float>(sum);
  if (std::isfinite(rounded) && std::fabs(rounded) > std::fabs(sum)) rounded = std::nextafter(rounded, 0.0f);
  return rounded;
}

template <typename scalar_t>
void mma_16x8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const unsigned lane = emulated_cuda::linear_thread_index() % 32;
  auto& exchange = warp_exchange();
  std::memcpy(exchange.a[lane], a, sizeof a);
  std::memcpy(exchange.b[lane], b, sizeof b);
  emulated_cuda::sync_threads();
  constexpr bool tf32 = std::is_same_v<scalar_t, float>;
  constexpr int depth = tf32 ? 8 : 16, half = depth / 2;  // a register covers half the depth
  for (int e = 0; e < 4; ++e) {
    const int row = lane / 4 + 8 * (e / 2), col = 2 * (lane % 4) + e % 2;
    double products[depth];
    for (int k = 0; k < depth; ++k) {
      // The lane and register holding A[row][k] and B[k][col], and the element within it.
      const int kk = k % half, reg = k / half, lane_a = row % 8 * 4 + (tf32 ? kk : kk / 2);
      const int lane_b = col * 4 + (tf32 ? kk : kk / 2), element = tf32 ? 0 : kk % 2;
      products[k] = double{operand<scalar_t>(exchange.a[lane_a][row / 8 + 2 * reg], element)} *
                    operand<scalar_t>(exchange.b[lane_b][reg], element);
    }
    d[e] = tensor_core_sum(d[e], products, depth);
  }
  emulated_cuda::sync_threads();
}

// cvt.rna.tf32.f32, on a float's bits.
inline uint32_t round_to_tf32(uint32_t bits) {
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  return bits;
}

}  // namespace warp_mma
}  // namespace conv_ext

namespace nvcuda {
namespace wmma {

// cvt.rna.tf32.f32: the 10-bit mantissa rounded to nearest, ties away from zero.
inline float __float_to_tf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits = conv_ext::warp_mma::round_to_tf32(bits);
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
  // The operands widened once, not once per product: c10::Half's conversion is the emulator's
  // slowest step otherwise (float16 took 7x bfloat16's time).
  float a_wide[m * k], b_wide[k * n];
  std::copy(a.x, a.x + m * k, a_wide);
  std::copy(b.x, b.x + k * n, b_wide);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float sum = c.x[i * n + j];
      for (int l = 0; l < k; ++l) sum += a_wide[i * k + l] * b_wide[l * n + j];
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
