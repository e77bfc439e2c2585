// Run-time switches shared by the CPU algorithms: environment overrides (read on every call, so
// tests can force each path) and the instruction set the vectorised loops run in.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace conv_ext {

inline bool env_is(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set != nullptr && std::strcmp(set, value) == 0;
}

// The instruction sets the kernels are compiled for, in order (AVX2 with F16C, AVX-512 with BW:
// the float16 and bfloat16 row conversions use them; every CPU with AVX2 or AVX-512 since 2013
// but Xeon Phi has them).
enum class Isa { generic, avx2, avx512 };

// The build to run. By default AVX-512 on Intel CPUs and AVX2 elsewhere: AMD's Zen 4 has
// AVX-512 but splits each 512-bit FMA in two, and the AVX2 builds and the algorithm choices were
// measured there. CONV_EXT_CPU_ISA=generic, avx2 or avx512 asks for a build (the best the CPU
// has, at most that one), so the tests can run each.
inline Isa cpu_isa() {
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  static const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                                 __builtin_cpu_supports("avx512bw");
  static const bool avx512_by_default = has_avx512 && __builtin_cpu_is("intel");
  const Isa best = has_avx512 ? Isa::avx512 : has_avx2 ? Isa::avx2 : Isa::generic;
  if (env_is("CONV_EXT_CPU_ISA", "generic")) return Isa::generic;
  if (env_is("CONV_EXT_CPU_ISA", "avx2")) return std::min(best, Isa::avx2);
  if (env_is("CONV_EXT_CPU_ISA", "avx512")) return best;
  return avx512_by_default ? Isa::avx512 : std::min(best, Isa::avx2);
}

inline bool use_avx2() { return cpu_isa() >= Isa::avx2; }
inline bool use_avx512() { return cpu_isa() == Isa::avx512; }

}  // namespace conv_ext
