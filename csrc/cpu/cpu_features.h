// Run-time switches shared by the CPU algorithms: environment overrides (read on every call, so
// tests can force each path) and the instruction set the vectorised loops run in.
#pragma once

#include "../conv2d.h"

#include <algorithm>
#include <cpuid.h>

namespace conv_ext {

// The instruction sets the kernels are compiled for, in order (AVX2 with F16C, AVX-512 with BW:
// the float16 and bfloat16 row conversions use them; every CPU with AVX2 or AVX-512 since 2013
// but Xeon Phi has them).
enum class Isa { generic, avx2, avx512 };

// AMD CPUs of family 0x1A (Zen 5) and later run 512-bit FMAs at full rate; Zen 4 (0x19) splits
// each in two.
inline bool amd_full_rate_avx512() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__builtin_cpu_is("amd") || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const unsigned base_family = (eax >> 8) & 0xF, extended_family = (eax >> 20) & 0xFF;
  return (base_family == 0xF ? base_family + extended_family : base_family) >= 0x1A;
}

// The build to run. By default AVX-512 on Intel CPUs and on AMD's Zen 5 and later, AVX2
// elsewhere: Zen 4 has AVX-512 but splits each 512-bit FMA in two, and the AVX2 builds and their
// algorithm choices were measured there (on Zen 5 the AVX-512 builds ran the suite's layers
// 1.1-2x faster). CONV_EXT_CPU_ISA=generic, avx2 or avx512 asks for a build (the best the CPU
// has, at most that one), so the tests can run each.
inline Isa cpu_isa() {
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  static const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                                 __builtin_cpu_supports("avx512bw");
  static const bool avx512_by_default = has_avx512 && (__builtin_cpu_is("intel") || amd_full_rate_avx512());
  const Isa best = has_avx512 ? Isa::avx512 : has_avx2 ? Isa::avx2 : Isa::generic;
  if (env_is("CONV_EXT_CPU_ISA", "generic")) return Isa::generic;
  if (env_is("CONV_EXT_CPU_ISA", "avx2")) return std::min(best, Isa::avx2);
  if (env_is("CONV_EXT_CPU_ISA", "avx512")) return best;
  return avx512_by_default ? Isa::avx512 : std::min(best, Isa::avx2);
}

inline bool use_avx2() { return cpu_isa() >= Isa::avx2; }
inline bool use_avx512() { return cpu_isa() == Isa::avx512; }

// Whether torch's BLAS, MKL, runs kernels as wide as ours: it runs AVX-512 ones on Intel CPUs
// only, AVX2 ones on AMD's. Where we run AVX-512 on AMD (Zen 5), it runs at a quarter of our
// micro-kernel's speed (measured on 2 cores: a 2048^3 sgemm ~100 GFLOP/s, where oneDNN's 3x3
// convolutions reach ~400), so the paths that call it lose to ours wherever both apply.
// CONV_EXT_CPU_BLAS=slow takes the paths chosen where it does not, so the tests can run them on
// any CPU.
inline bool blas_keeps_up() {
  static const bool intel = __builtin_cpu_is("intel");
  return !env_is("CONV_EXT_CPU_BLAS", "slow") && (intel || !use_avx512());
}

// CONV_EXT_CPU_BF16=vectors: bfloat16 on AVX512_BF16's vectors wherever they apply, also where
// AMX's tiles exist or Winograd would be chosen (bf16_pairs_conv2d.h), so the tests can run them.
inline bool bf16_vectors_forced() { return env_is("CONV_EXT_CPU_BF16", "vectors"); }

}  // namespace conv_ext
