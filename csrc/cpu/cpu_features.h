// Run-time switches shared by the CPU algorithms: environment overrides (read on every call, so
// tests can force each path) and the instruction set the vectorised loops run in.
#pragma once

#include <cstdlib>
#include <cstring>

namespace conv_ext {

inline bool env_is(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set != nullptr && std::strcmp(set, value) == 0;
}

// The instruction sets the kernels are compiled for, in order.
enum class Isa { generic, avx2, avx512 };

// The best the CPU has, capped by CONV_EXT_CPU_ISA (generic or avx2), so the tests can run the
// builds a CPU would not pick.
inline Isa cpu_isa() {
  static const Isa best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? Isa::avx512
                          : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")      ? Isa::avx2
                                                                                                 : Isa::generic;
  if (env_is("CONV_EXT_CPU_ISA", "generic")) return Isa::generic;
  if (env_is("CONV_EXT_CPU_ISA", "avx2") && best == Isa::avx512) return Isa::avx2;
  return best;
}

inline bool use_avx2() { return cpu_isa() >= Isa::avx2; }
inline bool use_avx512() { return cpu_isa() == Isa::avx512; }

}  // namespace conv_ext
