// Warp-level tensor-core MMA (mma.sync.m16n8k16, sm_80+) for float16/bfloat16 inputs with fp32
// accumulation, and the register layouts the kernels rely on (PTX ISA, "Matrix Fragments for
// mma.m16n8k16"); lane = 4 * g + t:
//   A (16x16, row-major), 4 regs of 2 halves: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..),
//                                             a2 = (g, 2t+8..),   a3 = (g+8, 2t+8..)
//   B (16x8, "col"),      2 regs:             b0 = (k = 2t..2t+1, n = g), b1 = (k = 2t+8.., n = g)
//   C (16x8, fp32),       4 floats:           c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// Two adjacent C tiles (n and n+8) therefore form the A operand of the next product without
// leaving registers, as in FlashAttention-2.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace freescale::attention::mma {

template <typename T>
__device__ __forceinline__ void m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1);

template <>
__device__ __forceinline__ void m16n8k16<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void m16n8k16<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded into one register of two halves, `lo` in the low half (the lower column).
template <typename T>
__device__ __forceinline__ uint32_t pack(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &h, sizeof(r));
  return r;
}

template <>
__device__ __forceinline__ uint32_t pack<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &h, sizeof(r));
  return r;
}

// Two consecutive halves of shared memory as one register (4-byte aligned by construction).
template <typename T>
__device__ __forceinline__ uint32_t ld2(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// The A fragment of rows [row0, row0 + 16) and columns [col0, col0 + 16) of a row-major tile.
template <typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int ld, int row0, int col0,
                                       int g, int t) {
  const T* p = tile + (row0 + g) * ld + col0 + 2 * t;
  a[0] = ld2(p);
  a[1] = ld2(p + 8 * ld);
  a[2] = ld2(p + 8);
  a[3] = ld2(p + 8 * ld + 8);
}

// The A operand of k-slice `kk` (columns 16 kk .. 16 kk + 15) from the fp32 C tiles 2 kk and
// 2 kk + 1 of the previous product.
template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                       const float (&c1)[4]) {
  a[0] = pack<T>(c0[0], c0[1]);
  a[1] = pack<T>(c0[2], c0[3]);
  a[2] = pack<T>(c1[0], c1[1]);
  a[3] = pack<T>(c1[2], c1[3]);
}

}  // namespace freescale::attention::mma

namespace freescale::attention::mma {

// The B fragment (k = [k0, k0 + 16), n = [n0, n0 + 8)) of a tile stored n-major: tile[n][k],
// e.g. K rows for Q K^T or a transposed V for P V.
template <typename T>
__device__ __forceinline__ void load_b(uint32_t& b0, uint32_t& b1, const T* tile, int ld, int n0,
                                       int k0, int g, int t) {
  const T* p = tile + (n0 + g) * ld + k0 + 2 * t;
  b0 = ld2(p);
  b1 = ld2(p + 8);
}

}  // namespace freescale::attention::mma
