// Runs conv_ext's CUDA kernels on the CPU, so that the tests check them where there is no GPU.
// A launch runs its blocks one after another; a block's threads are fibers (ucontext) on the
// calling thread, each running until its next __syncthreads() before the next one starts, and a
// barrier is passed once every thread has reached it. __shared__ variables become function
// statics, which a block's threads therefore share. Running each thread alone up to the barrier
// is the schedule that a missing barrier fails under: a thread that reads shared memory before
// the others wrote it, or overwrites what they have yet to read, gives a wrong result every time.
// It checks what the kernels compute (indexing, masking, barriers), not their speed nor the
// GPU's memory model.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

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

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __syncthreads() emulated_cuda::sync_threads()
#define threadIdx emulated_cuda::thread_idx
#define blockIdx emulated_cuda::block_idx
#define blockDim emulated_cuda::block_dim
#define gridDim emulated_cuda::grid_dim
