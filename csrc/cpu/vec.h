// SIMD vectors and their operations, one set per instruction set, each compiled under its own
// target pragma: kernels written against Vec<scalar_t> are compiled once per namespace.
#pragma once

#include <immintrin.h>

namespace conv_ext {

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {

template <typename scalar_t>
struct Vec;
template <>
struct Vec<float> {
  using type = __m256;
  static constexpr int kLanes = 8;
  static type zero() { return _mm256_setzero_ps(); }
  static type load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, type v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, type v) { _mm256_stream_ps(p, v); }  // p 32-byte aligned
  static type broadcast(float x) { return _mm256_set1_ps(x); }
  static type fma(type a, type b, type c) { return _mm256_fmadd_ps(a, b, c); }
  static type mul(type a, type b) { return _mm256_mul_ps(a, b); }
  static type add(type a, type b) { return _mm256_add_ps(a, b); }
  static float sum(type v) {  // of the lanes
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
  }
  static __m256i first_lanes(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static type load_first(const float* p, int n) { return _mm256_maskload_ps(p, first_lanes(n)); }  // zero past n
  using mask = __m256i;
  static mask lanes(int lo, int hi) { return _mm256_andnot_si256(first_lanes(lo), first_lanes(hi)); }  // [lo, hi)
  static type load(const float* p, mask m) { return _mm256_maskload_ps(p, m); }  // zero (and read nothing) outside m
  // By plain stores of 4, 2 and 1 lanes: Zen 3 runs vmaskmovps's stores so slowly that the
  // edges of transposes through them ran no faster than element by element (depthwise 3x3 1024
  // @7 at batch 8, forward on the channel blocks: 0.31 ms either way, 0.22 with these).
  static void store_first(float* p, type v, int n) {
    if (n == kLanes) return store(p, v);
    __m128 part = _mm256_castps256_ps128(v);
    if (n >= 4) _mm_storeu_ps(p, part), part = _mm256_extractf128_ps(v, 1), p += 4, n -= 4;
    if (n >= 2) _mm_storel_pi(reinterpret_cast<__m64*>(p), part), part = _mm_movehl_ps(part, part), p += 2, n -= 2;
    if (n == 1) _mm_store_ss(p, part);
  }
  // The even (odd) lanes of lo followed by hi, in the order of `ordered`'s operand: within each
  // 128-bit half, so that kernels which split many vectors put them in order once, at the end
  // (a lane-crossing permute each had bound Zen 3).
  static type even_lanes_unordered(type lo, type hi) { return _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)); }
  static type odd_lanes_unordered(type lo, type hi) { return _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)); }
  static type ordered(type v) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static type even_lanes(type lo, type hi) { return ordered(even_lanes_unordered(lo, hi)); }  // lanes 0, 2, ..., 14 of lo followed by hi
  // even's and odd's lanes taken in turn (even[0], odd[0], even[1], ...): the first 8 of them in
  // first, the others in second.
  static void interleave(type even, type odd, type& first, type& second) {
    const type lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
    first = _mm256_permute2f128_ps(lo, hi, 0x20);
    second = _mm256_permute2f128_ps(lo, hi, 0x31);
  }
  static type lanes_up(type v) {  // lane i + 1 takes lane i; lane 0 zero
    return _mm256_blend_ps(_mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6)), zero(), 0x01);
  }
  static type lanes_down(type v) {  // lane i takes lane i + 1; the last lane zero
    return _mm256_blend_ps(_mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7)), zero(), 0x80);
  }
  // Halves: 4 lanes from lo in the low half, 4 from hi in the high one.
  static type load_halves(const float* lo, const float* hi) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(lo)), _mm_loadu_ps(hi), 1);
  }
  static void store_halves(float* lo, float* hi, type v) {
    _mm_storeu_ps(lo, _mm256_castps256_ps128(v));
    _mm_storeu_ps(hi, _mm256_extractf128_ps(v, 1));
  }
  static void store_low_half(float* p, type v) { _mm_storeu_ps(p, _mm256_castps256_ps128(v)); }
  static type low_high(type lo, type hi) { return _mm256_blend_ps(lo, hi, 0xf0); }  // lo's low half, hi's high one
  static type halves_lanes_down(type v) {  // lanes_down within each half
    return _mm256_castsi256_ps(_mm256_alignr_epi8(_mm256_setzero_si256(), _mm256_castps_si256(v), 4));
  }
  // p[0] in the even lanes, p[1] in the odd ones (one 64-bit broadcast).
  static type broadcast_pair(const float* p) {
    return _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(p)));
  }
  // The halves' lanes taken in turn (lo[0], hi[0], lo[1], ...), and back.
  static type interleave_halves(type v) { return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)); }
  static type deinterleave_halves(type v) { return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)); }
};
template <>
struct Vec<double> {
  using type = __m256d;
  static constexpr int kLanes = 4;
  static type zero() { return _mm256_setzero_pd(); }
  static type load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, type v) { _mm256_storeu_pd(p, v); }
  static void stream(double* p, type v) { _mm256_stream_pd(p, v); }  // p 32-byte aligned
  static type broadcast(double x) { return _mm256_set1_pd(x); }
  static type fma(type a, type b, type c) { return _mm256_fmadd_pd(a, b, c); }
  static type mul(type a, type b) { return _mm256_mul_pd(a, b); }
  static type add(type a, type b) { return _mm256_add_pd(a, b); }
  static double sum(type v) {  // of the lanes
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_hadd_pd(s, s));
  }
  static __m256i first_lanes(int n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
  static type load_first(const double* p, int n) { return _mm256_maskload_pd(p, first_lanes(n)); }  // zero past n
  using mask = __m256i;
  static mask lanes(int lo, int hi) { return _mm256_andnot_si256(first_lanes(lo), first_lanes(hi)); }  // [lo, hi)
  static type load(const double* p, mask m) { return _mm256_maskload_pd(p, m); }  // zero (and read nothing) outside m
  static void store_first(double* p, type v, int n) {  // as Vec<float>'s
    if (n == kLanes) return store(p, v);
    __m128d part = _mm256_castpd256_pd128(v);
    if (n >= 2) _mm_storeu_pd(p, part), part = _mm256_extractf128_pd(v, 1), p += 2, n -= 2;
    if (n == 1) _mm_store_sd(p, part);
  }
  static type even_lanes_unordered(type lo, type hi) { return _mm256_unpacklo_pd(lo, hi); }  // as Vec<float>'s
  static type odd_lanes_unordered(type lo, type hi) { return _mm256_unpackhi_pd(lo, hi); }
  static type ordered(type v) { return _mm256_permute4x64_pd(v, _MM_SHUFFLE(3, 1, 2, 0)); }
  static type even_lanes(type lo, type hi) { return ordered(even_lanes_unordered(lo, hi)); }  // lanes 0, 2, 4, 6 of lo followed by hi
  static void interleave(type even, type odd, type& first, type& second) {  // as Vec<float>'s
    const type lo = _mm256_unpacklo_pd(even, odd), hi = _mm256_unpackhi_pd(even, odd);
    first = _mm256_permute2f128_pd(lo, hi, 0x20);
    second = _mm256_permute2f128_pd(lo, hi, 0x31);
  }
  static type lanes_up(type v) {  // lane i + 1 takes lane i; lane 0 zero
    return _mm256_blend_pd(_mm256_permute4x64_pd(v, _MM_SHUFFLE(2, 1, 0, 0)), zero(), 0x1);
  }
  static type lanes_down(type v) {  // lane i takes lane i + 1; the last lane zero
    return _mm256_blend_pd(_mm256_permute4x64_pd(v, _MM_SHUFFLE(3, 3, 2, 1)), zero(), 0x8);
  }
  static type load_halves(const double* lo, const double* hi) {  // as Vec<float>'s, 2 lanes each
    return _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(lo)), _mm_loadu_pd(hi), 1);
  }
  static void store_halves(double* lo, double* hi, type v) {
    _mm_storeu_pd(lo, _mm256_castpd256_pd128(v));
    _mm_storeu_pd(hi, _mm256_extractf128_pd(v, 1));
  }
  static void store_low_half(double* p, type v) { _mm_storeu_pd(p, _mm256_castpd256_pd128(v)); }
  static type low_high(type lo, type hi) { return _mm256_blend_pd(lo, hi, 0xc); }
  static type halves_lanes_down(type v) {
    return _mm256_castsi256_pd(_mm256_alignr_epi8(_mm256_setzero_si256(), _mm256_castpd_si256(v), 8));
  }
};

}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
namespace avx512 {

template <typename scalar_t>
struct Vec;
template <>
struct Vec<float> {
  using type = __m512;
  static constexpr int kLanes = 16;
  static type zero() { return _mm512_setzero_ps(); }
  static type load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, type v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, type v) { _mm512_stream_ps(p, v); }  // p 64-byte aligned
  static type broadcast(float x) { return _mm512_set1_ps(x); }
  static type fma(type a, type b, type c) { return _mm512_fmadd_ps(a, b, c); }
  static type mul(type a, type b) { return _mm512_mul_ps(a, b); }
  static type add(type a, type b) { return _mm512_add_ps(a, b); }
  static float sum(type v) { return _mm512_reduce_add_ps(v); }  // of the lanes
  static type load_first(const float* p, int n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p); }  // zero past n
  using mask = __mmask16;
  static mask lanes(int lo, int hi) { return static_cast<mask>((1u << hi) - (1u << lo)); }  // [lo, hi)
  static type load(const float* p, mask m) { return _mm512_maskz_loadu_ps(m, p); }  // zero (and read nothing) outside m
  static void store_first(float* p, type v, int n) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v); }
  static type even_lanes(type lo, type hi) {  // lanes 0, 2, ..., 30 of lo followed by hi
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(lo, even, hi);
  }
};
template <>
struct Vec<double> {
  using type = __m512d;
  static constexpr int kLanes = 8;
  static type zero() { return _mm512_setzero_pd(); }
  static type load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, type v) { _mm512_storeu_pd(p, v); }
  static void stream(double* p, type v) { _mm512_stream_pd(p, v); }  // p 64-byte aligned
  static type broadcast(double x) { return _mm512_set1_pd(x); }
  static type fma(type a, type b, type c) { return _mm512_fmadd_pd(a, b, c); }
  static type mul(type a, type b) { return _mm512_mul_pd(a, b); }
  static type add(type a, type b) { return _mm512_add_pd(a, b); }
  static double sum(type v) { return _mm512_reduce_add_pd(v); }  // of the lanes
  static type load_first(const double* p, int n) { return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1), p); }  // zero past n
  using mask = __mmask8;
  static mask lanes(int lo, int hi) { return static_cast<mask>((1u << hi) - (1u << lo)); }  // [lo, hi)
  static type load(const double* p, mask m) { return _mm512_maskz_loadu_pd(m, p); }  // zero (and read nothing) outside m
  static void store_first(double* p, type v, int n) { _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), v); }
  static type even_lanes(type lo, type hi) {  // lanes 0, 2, ..., 14 of lo followed by hi
    const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    return _mm512_permutex2var_pd(lo, even, hi);
  }
};

}  // namespace avx512
#pragma GCC pop_options

}  // namespace conv_ext
