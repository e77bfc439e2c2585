// Rows of float16 or bfloat16 widened to float32, and float32 rounded to them (to nearest even;
// NaN stays NaN), one set per instruction set like vec.h. c10's scalar conversions branch on
// special values, and the loops the compiler made of them ran 4 lanes wide: they took most of a
// bfloat16 or float16 depthwise layer's time (2.4x and 4x its float32 time, measured). With
// AVX-512, also Vec's loads and stores on such rows (Widened), for kernels that read them in place.
#pragma once

#include "cpu_features.h"
#include "vec.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <type_traits>

namespace conv_ext {

namespace generic {

template <typename io_t>
io_t narrow(float v);

template <>
inline c10::BFloat16 narrow<c10::BFloat16>(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const auto rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  return c10::BFloat16(v != v ? uint16_t{0x7FC0} : rounded, c10::BFloat16::from_bits());
}

template <>
inline c10::Half narrow<c10::Half>(float v) {
  return static_cast<c10::Half>(v);
}

template <typename io_t>
void widen_row(const io_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename io_t>
void narrow_row(const float* src, int64_t n, io_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = narrow<io_t>(src[i]);
}

}  // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {

// Eight values at a time; the last n % 8 by the scalar code.
inline __m256 widen8(const c10::BFloat16* src) {
  const __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
}
inline __m256 widen8(const c10::Half* src) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}

inline void narrow8(__m256 v, c10::BFloat16* dst) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), packed);
}
inline void narrow8(__m256 v, c10::Half* dst) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

template <typename io_t>
void widen_row(const io_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, widen8(src + i));
  generic::widen_row(src + i, n - i, dst + i);
}

template <typename io_t>
void narrow_row(const float* src, int64_t n, io_t* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) narrow8(_mm256_loadu_ps(src + i), dst + i);
  generic::narrow_row(src + i, n - i, dst + i);
}

// The vectors of a kernel that reads and writes io_t: float32 and float64 only in this build (its
// float16 and bfloat16 planes are copied widened instead; see direct_conv2d.cpp).
template <typename io_t>
using IoVec = Vec<io_t>;

}  // namespace avx2
#pragma GCC pop_options

// GCC 12's AVX-512 conversions and shifts start their results from a deliberately undefined
// vector, which -Wmaybe-uninitialized reports wherever they are inlined (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx2,fma,f16c,prefer-vector-width=512")
namespace avx512 {

// Sixteen values at a time, the last ones under a mask.
inline __m512 widen16(const c10::BFloat16* src, __mmask16 mask) {
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, src);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 widen16(const c10::Half* src, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, src));
}

inline __m256i narrow16(__m512 v, c10::BFloat16*) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0)));
}
inline __m256i narrow16(__m512 v, c10::Half*) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT); }

inline __mmask16 first(int64_t count) { return static_cast<__mmask16>((1u << count) - 1); }

template <typename io_t>
void widen_row(const io_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, widen16(src + i, 0xFFFF));
  if (i < n) _mm512_mask_storeu_ps(dst + i, first(n - i), widen16(src + i, first(n - i)));
}

template <typename io_t>
void narrow_row(const float* src, int64_t n, io_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), narrow16(_mm512_loadu_ps(src + i), dst));
  }
  if (i < n) {
    const __mmask16 mask = first(n - i);
    _mm256_mask_storeu_epi16(dst + i, mask, narrow16(_mm512_maskz_loadu_ps(mask, src + i), dst));
  }
}

// Vec<float> on float16 or bfloat16 rows, for kernels written against Vec: loads widen, stores
// round.
template <typename io_t>
struct Widened : Vec<float> {
  static type load(const io_t* p) { return widen16(p, 0xFFFF); }
  static type load(const io_t* p, mask m) { return widen16(p, m); }  // zero (and read nothing) outside m
  static void store(io_t* p, type v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow16(v, p)); }
  static void store_first(io_t* p, type v, int n) { _mm256_mask_storeu_epi16(p, first(n), narrow16(v, p)); }
};

// The vectors of a kernel that reads and writes io_t.
template <typename io_t>
using IoVec = std::conditional_t<std::is_floating_point_v<io_t>, Vec<io_t>, Widened<io_t>>;

}  // namespace avx512
#pragma GCC pop_options
#pragma GCC diagnostic pop

// dst[i] = src[i] for i < n: float16 or bfloat16 widened to float32, float32 rounded to them, or a
// copy, by the loops of instruction set `isa`.
template <Isa isa, typename from_t, typename to_t>
void convert_row(const from_t* src, int64_t n, to_t* dst) {
  if constexpr (std::is_same_v<from_t, to_t>) {
    std::copy(src, src + n, dst);
  } else if constexpr (std::is_same_v<to_t, float>) {
    if constexpr (isa == Isa::avx512) {
      avx512::widen_row(src, n, dst);
    } else if constexpr (isa == Isa::avx2) {
      avx2::widen_row(src, n, dst);
    } else {
      generic::widen_row(src, n, dst);
    }
  } else {
    static_assert(std::is_same_v<from_t, float>);
    if constexpr (isa == Isa::avx512) {
      avx512::narrow_row(src, n, dst);
    } else if constexpr (isa == Isa::avx2) {
      avx2::narrow_row(src, n, dst);
    } else {
      generic::narrow_row(src, n, dst);
    }
  }
}

// convert_row for this CPU's instruction set (asked once per call site, not per row).
template <typename from_t, typename to_t>
using ConvertRow = void (*)(const from_t* src, int64_t n, to_t* dst);

template <typename from_t, typename to_t>
ConvertRow<from_t, to_t> convert_row_for_this_cpu() {
  return use_avx512() ? &convert_row<Isa::avx512, from_t, to_t>
         : use_avx2() ? &convert_row<Isa::avx2, from_t, to_t>
                      : &convert_row<Isa::generic, from_t, to_t>;
}

}  // namespace conv_ext
