// Run-time switches shared by the CPU algorithms: environment overrides (read on every call, so
// tests can force each path) and the instruction set the vectorised loops are compiled for.
#pragma once

#include <cstdlib>
#include <cstring>

namespace conv_ext {

inline bool env_is(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set != nullptr && std::strcmp(set, value) == 0;
}

// Whether to run the AVX2+FMA build of a kernel: the CPU has it and CONV_EXT_CPU_ISA=generic
// does not ask for the baseline build.
inline bool use_avx2() {
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has_avx2 && !env_is("CONV_EXT_CPU_ISA", "generic");
}

}  // namespace conv_ext
