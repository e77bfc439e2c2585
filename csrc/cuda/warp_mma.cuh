// The sm_80 instructions the channels-last tensor-core GEMM (channels_last_mma.cuh) is built from,
// as small functions: asynchronous 16-byte copies into shared memory (cp.async), loads of 8 x 8
// matrices from shared memory into a warp's fragments (ldmatrix), and the warp's m16 n8 products
// (mma.sync). tests/emulated_cuda/cuda_on_cpu.h defines the same functions on the CPU.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace conv_ext {
namespace warp_mma {

#ifndef CONV_EXT_EMULATED_CUDA

// Copies 16 bytes from global src to shared dst without holding a register, or writes 16 zeros
// where !valid (src is then not read).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src), "r"(valid ? 16 : 0));
#endif
}

// Closes the group of this thread's copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most `pending` of this thread's committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
#endif
}

// Four 8 x 8 matrices of 16-bit elements (or 8 x 4 of 32-bit) from shared memory: lanes 8j to
// 8j + 7 give the addresses of matrix j's rows (16 bytes each), and each lane receives in r[j] the
// two 16-bit elements of matrix j at row lane / 4, columns 2 (lane % 4) and 2 (lane % 4) + 1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared));
#endif
}

// As ldmatrix_x4, each matrix transposed: lane receives in r[j] the elements of matrix j at rows
// 2 (lane % 4) and 2 (lane % 4) + 1, column lane / 4 (16-bit elements only).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared));
#endif
}

// d += a b for an m16 x n8 tile, two 16-byte chunks deep (16 elements of 16 bits, 8 of TF32), in
// the warp's fragment layouts (PTX ISA, mma.m16n8k16 and mma.m16n8k8): a row-major, b column-major.
template <typename scalar_t>
__device__ void mma_16x8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define CONV_EXT_MMA_16X8(scalar_t, shape_and_types)                                                     \
  template <>                                                                                            \
  __device__ __forceinline__ void mma_16x8<scalar_t>(float (&d)[4], const uint32_t (&a)[4],              \
                                                     const uint32_t (&b)[2]) {                           \
    asm volatile("mma.sync.aligned." shape_and_types                                                     \
                 " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"                   \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                        \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));                   \
  }
#else
#define CONV_EXT_MMA_16X8(scalar_t, shape_and_types)                                                     \
  template <>                                                                                            \
  __device__ __forceinline__ void mma_16x8<scalar_t>(float (&)[4], const uint32_t (&)[4], const uint32_t (&)[2]) {}
#endif
CONV_EXT_MMA_16X8(c10::Half, "m16n8k16.row.col.f32.f16.f16.f32")
CONV_EXT_MMA_16X8(c10::BFloat16, "m16n8k16.row.col.f32.bf16.bf16.f32")
CONV_EXT_MMA_16X8(float, "m16n8k8.row.col.f32.tf32.tf32.f32")
#undef CONV_EXT_MMA_16X8

// A float32 operand register rounded to TF32 (cvt.rna: to nearest, ties away from zero), as
// PyTorch's TF32 rounds; the tensor cores would otherwise drop the low bits.
__device__ __forceinline__ uint32_t round_to_tf32(uint32_t bits) {
  uint32_t rounded = bits;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(rounded) : "f"(__uint_as_float(bits)));
#endif
  return rounded;
}

#endif  // CONV_EXT_EMULATED_CUDA

// Rounds operand registers to what the tensor cores multiply: TF32 for float32, nothing to do for
// the 16-bit types.
template <typename scalar_t, int n>
__device__ __forceinline__ void round_operands(uint32_t (&r)[n]) {
  if constexpr (std::is_same_v<scalar_t, float>) {
#pragma unroll
    for (auto& v : r) v = round_to_tf32(v);
  }
}

// v (a float32's bits) as the sum of two TF32 values, big + small (the bits of each), so that
// products of such pairs carry about 21 bits of each operand: big is v cut to TF32 (toward zero:
// it cannot overflow), small the rest rounded to TF32, of v's sign. The three products of two
// pairs, small big + big small + big big, must give IEEE's infinities and NaNs, so where the rest
// is 0 (v a TF32 value already, or an infinity) small is 2^-126, float32's least normal value,
// with v's sign: an infinity times it is an infinity of the right sign, where times 0 it would be
// NaN. Only v = 0 has small = 0; a NaN is itself twice.
__device__ __forceinline__ uint32_t split_to_tf32(uint32_t& small, uint32_t v) {
  constexpr uint32_t kSign = 0x80000000u, kInfinity = 0x7f800000u, kLeastNormal = 0x00800000u;
  const uint32_t magnitude = v & ~kSign;
  if (magnitude > kInfinity) {
    small = v;
    return v;
  }
  const uint32_t big = magnitude == kInfinity ? v : v & 0xffffe000u;
  small = magnitude == kInfinity ? 0 : round_to_tf32(__float_as_uint(__uint_as_float(v) - __uint_as_float(big)));
  if (small == 0 && magnitude != 0) small = (v & kSign) | kLeastNormal;
  return big;
}

// Splits each float32 operand register r into big + small (split_to_tf32): r keeps the big part.
template <int n>
__device__ __forceinline__ void split_operands(uint32_t (&r)[n], uint32_t (&small)[n]) {
#pragma unroll
  for (int i = 0; i < n; ++i) r[i] = split_to_tf32(small[i], r[i]);
}

// d += a b by 3xTF32, each operand given as big + small (split_operands): the small terms first,
// big big last. The tensor cores add by cutting every term to the largest one's 24 bits, toward
// zero: into d, which grows with the depth, the products would lose their low bits at every step, a
// bias that grows too. They sum in a fresh accumulator, which an IEEE add (to nearest) adds to d.
__device__ __forceinline__ void mma_16x8_split(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&a_small)[4],
                                               const uint32_t (&b)[2], const uint32_t (&b_small)[2]) {
  float step[4] = {};
  mma_16x8<float>(step, a_small, b);
  mma_16x8<float>(step, a, b_small);
  mma_16x8<float>(step, a, b);
#pragma unroll
  for (int e = 0; e < 4; ++e) d[e] += step[e];
}

}  // namespace warp_mma
}  // namespace conv_ext
