// Run-time switches shared by the CPU algorithms: environment overrides (read on every call, so
// tests can force each path) and the instruction set the vectorised loops run in.
#pragma once

#include "../conv2d.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>

namespace conv_ext {

// The instruction sets the kernels are compiled for, in order (AVX2 with F16C, AVX-512 with BW:
// the float16 and bfloat16 row conversions use them; every CPU with AVX2 or AVX-512 since 2013
// but Xeon Phi has them).
enum class Isa { generic, avx2, avx512 };

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
  if (env_is("CONV_EXT_CPU_ISA", "generic")) return Isa::generic;
  if (env_is("CONV_EXT_CPU_ISA", "avx2")) return std::min(best, Isa::avx2);
  return best;
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
  if (env_is("CONV_EXT_CPU_BLAS", "fast")) return true;
  return !env_is("CONV_EXT_CPU_BLAS", "slow") && (cpu_is_intel() || !use_avx512());
}

// CONV_EXT_CPU_BF16=vectors: bfloat16 on AVX512_BF16's vectors wherever they apply, also where
// AMX's tiles exist or Winograd would be chosen (bf16_pairs_conv2d.h), so the tests can run them.
inline bool bf16_vectors_forced() { return env_is("CONV_EXT_CPU_BF16", "vectors"); }

}  // namespace conv_ext
