// Run-time switches shared by the CPU algorithms: environment overrides (read once per call of
// an op, so tests can force each path) and the instruction set the vectorised loops run in.
#pragma once

#include "../conv2d.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace conv_ext {

// The instruction sets the kernels are compiled for, in order (AVX2 with F16C, AVX-512 with BW:
// the float16 and bfloat16 row conversions use them; every CPU with AVX2 or AVX-512 since 2013
// but Xeon Phi has them).
enum class Isa { generic, avx2, avx512 };

// The environment's CPU switches (CONV_EXT_CPU_ISA, CONV_EXT_CPU_BLAS, CONV_EXT_CPU_BF16 and
// CONV_EXT_CPU_ALGORITHM): read_cpu_switches() reads them at the entry of each op's CPU kernel,
// once per call, and the kernels ask that snapshot wherever they decide, on any thread. getenv
// scans the whole environment (40 ns with 41 variables), and the kernels had asked hundreds of
// times a call (3x3 512 @7 at batch 1: 344 reads a forward; depthwise 256 @28 at batch 8, two
// per plane, 1.07-1.08x its time).
struct CpuSwitches {
  enum class Blas : uint8_t { by_cpu, slow, fast };
  enum class Algorithm : uint8_t { by_shape, gemm, direct, winograd };
  Isa isa_at_most = Isa::avx512;
  Blas blas = Blas::by_cpu;
  Algorithm algorithm = Algorithm::by_shape;
  bool bf16_vectors = false;
  bool read = false;  // the snapshot is one (before the first call, the switches are read where asked)
};

inline std::atomic<CpuSwitches>& cpu_switches_snapshot() {
  static std::atomic<CpuSwitches> snapshot{CpuSwitches{}};
  return snapshot;
}

inline CpuSwitches read_cpu_switches() {
  using S = CpuSwitches;
  S s;
  s.isa_at_most = env_is("CONV_EXT_CPU_ISA", "generic") ? Isa::generic
                  : env_is("CONV_EXT_CPU_ISA", "avx2")  ? Isa::avx2
                                                         : Isa::avx512;
  s.blas = env_is("CONV_EXT_CPU_BLAS", "slow") ? S::Blas::slow : env_is("CONV_EXT_CPU_BLAS", "fast") ? S::Blas::fast : S::Blas::by_cpu;
  s.algorithm = env_is("CONV_EXT_CPU_ALGORITHM", "gemm")       ? S::Algorithm::gemm
                : env_is("CONV_EXT_CPU_ALGORITHM", "direct")   ? S::Algorithm::direct
                : env_is("CONV_EXT_CPU_ALGORITHM", "winograd") ? S::Algorithm::winograd
                                                               : S::Algorithm::by_shape;
  s.bf16_vectors = env_is("CONV_EXT_CPU_BF16", "vectors");
  s.read = true;
  cpu_switches_snapshot().store(s, std::memory_order_relaxed);
  return s;
}

inline CpuSwitches cpu_switches() {
  const CpuSwitches s = cpu_switches_snapshot().load(std::memory_order_relaxed);
  return s.read ? s : read_cpu_switches();
}

// The build to run: by default the widest the CPU has. AMD's Zen 4 too, although it splits each
// 512-bit FMA in two: with the AVX-512 builds and their algorithm choices the suite's float32
// layers ran 1.1-2.7x faster there than with the AVX2 builds (geometric means over its layers,
// forward: 1.48x against 1.14x of oneDNN at batch 8, 1.39x against 0.97x at batch 1; A/B in one
// session, Zen 4 EPYC, 2 cores). CONV_EXT_CPU_ISA=generic, avx2 or avx512 asks for a build (the
// best the CPU has, at most that one), so the tests can run each.
inline Isa cpu_isa() {
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  static const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                                 __builtin_cpu_supports("avx512bw");
  const Isa best = has_avx512 ? Isa::avx512 : has_avx2 ? Isa::avx2 : Isa::generic;
  return std::min(best, cpu_switches().isa_at_most);
}

// A core's L2 cache in bytes, as the C library reports it (1 MiB where it does not): 1 MiB on
// Zen 4 and 5, 2 MiB on Intel's Xeons since Sapphire Rapids.
inline int64_t core_l2_bytes() {
  static const int64_t bytes = [] {
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return reported > 0 ? int64_t{reported} : int64_t{1} << 20;
  }();
  return bytes;
}

inline bool cpu_is_intel() {
  static const bool intel = __builtin_cpu_is("intel");
  return intel;
}

// AMD's Zen 4 (family 19h; Zen 3, the family's other cores, has no AVX-512) issues each 512-bit
// instruction as two 256-bit halves, Zen 5 (1Ah) at full width.
inline bool cpu_halves_avx512() {
  static const bool zen4 = __builtin_cpu_is("amd") && __builtin_cpu_is("amdfam19h");
  return zen4;
}

inline bool use_avx2() { return cpu_isa() >= Isa::avx2; }
inline bool use_avx512() { return cpu_isa() == Isa::avx512; }

// Whether torch's BLAS, MKL, runs kernels as wide as ours: it runs AVX-512 ones on Intel CPUs
// only, AVX2 ones on AMD's. Where we run AVX-512 on AMD (Zen 5), it runs at a quarter of our
// micro-kernel's speed (measured on 2 cores: a 2048^3 sgemm ~100 GFLOP/s, where oneDNN's 3x3
// convolutions reach ~400), so the paths that call it lose to ours wherever both apply.
// CONV_EXT_CPU_BLAS=slow takes the paths chosen where it does not, and =fast those chosen where
// it does, so the tests can run either on any CPU.
inline bool blas_keeps_up() {
  switch (cpu_switches().blas) {
    case CpuSwitches::Blas::fast: return true;
    case CpuSwitches::Blas::slow: return false;
    default: return cpu_is_intel() || !use_avx512();
  }
}

// CONV_EXT_CPU_BF16=vectors: bfloat16 on AVX512_BF16's vectors wherever they apply, also where
// AMX's tiles exist or Winograd would be chosen (bf16_pairs_conv2d.h), so the tests can run them.
inline bool bf16_vectors_forced() { return cpu_switches().bf16_vectors; }

}  // namespace conv_ext
