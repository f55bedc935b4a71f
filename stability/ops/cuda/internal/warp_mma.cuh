// Register-level tensor-core products (sm_80+): the PTX instructions FlashAttention-2 builds
// on, one warp each, operands in registers with the layouts the PTX ISA fixes ("Matrix
// Fragments for mma.m16n8k16", "ldmatrix"). With g = lane / 4 and q = lane % 4:
//   A [16 × 16] bf16, four 32-bit registers of two values (the lower column in the low half):
//     a0 = A[g][2q..2q+1], a1 = A[g+8][2q..], a2 = A[g][2q+8..], a3 = A[g+8][2q+8..]
//   B [16 × 8] bf16, two registers: b0 = B[2q..2q+1][g], b1 = B[2q+8..2q+9][g]
//   C, D [16 × 8] fp32: d0, d1 = D[g][2q..2q+1], d2, d3 = D[g+8][2q..2q+1]
// so that the D of one product, rounded to bf16 in pairs, is the A of the next (P = softmax(S)
// multiplies V without leaving the registers). ldmatrix loads four 8 × 8 bf16 matrices from
// shared memory: lane i gives the address of row i % 8 of matrix i / 8 (16-byte aligned), and
// register j of each lane gets matrix j's [g][2q..2q+1] — or, transposed, [2q..2q+1][g].
//
// Under the CUDA emulator each instruction gathers the warp's operands (emu::WarpAllGather,
// one warp barrier) and each lane computes its own registers from the layouts above.
#ifndef STABILITY_OPS_CUDA_INTERNAL_WARP_MMA_CUH_
#define STABILITY_OPS_CUDA_INTERNAL_WARP_MMA_CUH_

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace stability::ops::cuda::internal {

// Two floats rounded to bf16, lo in the low half: one register of an A or B fragment.
__device__ inline uint32_t PackBf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

#if defined(STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_)
namespace warp_mma_emulated {
inline float Bf16Half(uint32_t reg, int half) {
  const uint32_t wide = half ? (reg & 0xffff0000u) : (reg << 16);
  float f;
  std::memcpy(&f, &wide, sizeof(f));
  return f;
}
struct MmaOperands {
  uint32_t a[4], b[2];
};
template <bool kTransposed>
inline void LdMatrixX4(uint32_t (&r)[4], const __nv_bfloat16* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) ::emu::Fault("ldmatrix: a row address not 16-byte aligned");
  const __nv_bfloat16* rows[32];
  ::emu::WarpAllGather(row, rows);
  const int lane = ::emu::LaneId(), g = lane / 4, q = lane % 4;
  for (int j = 0; j < 4; ++j) {
    uint16_t lo, hi;
    if (kTransposed) {
      std::memcpy(&lo, rows[8 * j + 2 * q] + g, 2);
      std::memcpy(&hi, rows[8 * j + 2 * q + 1] + g, 2);
    } else {
      std::memcpy(&lo, rows[8 * j + g] + 2 * q, 2);
      std::memcpy(&hi, rows[8 * j + g] + 2 * q + 1, 2);
    }
    r[j] = uint32_t{lo} | uint32_t{hi} << 16;
  }
}
}  // namespace warp_mma_emulated
#endif

// d += A·B for one m16n8k16 tile: bf16 operands, fp32 accumulation.
__device__ inline void MmaBf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_)
  using namespace warp_mma_emulated;
  MmaOperands all[32];
  ::emu::WarpAllGather(MmaOperands{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}}, all);
  if (::emu::LaneId() == 0) ::emu::internal::tensor_core_flops += 2 * 16 * 8 * 16;
  const int lane = ::emu::LaneId(), g = lane / 4, q = lane % 4;
  const auto a_at = [&](int row, int k) {  // the lane and register that hold A[row][k]
    return Bf16Half(all[(row % 8) * 4 + (k % 8) / 2].a[(row / 8) + 2 * (k / 8)], k % 2);
  };
  const auto b_at = [&](int k, int col) { return Bf16Half(all[col * 4 + (k % 8) / 2].b[k / 8], k % 2); };
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * q + i % 2;
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += a_at(row, k) * b_at(k, col);
    d[i] = acc;
  }
#endif
}

// Four 8 × 8 bf16 matrices from shared memory (row: this lane's row address, see above).
__device__ inline void LdMatrixX4(uint32_t (&r)[4], const __nv_bfloat16* row) {
#if defined(__CUDA_ARCH__)
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#elif defined(STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_)
  warp_mma_emulated::LdMatrixX4<false>(r, row);
#endif
}

// The same, each matrix transposed: register j = matrix j's [2q..2q+1][g].
__device__ inline void LdMatrixX4Trans(uint32_t (&r)[4], const __nv_bfloat16* row) {
#if defined(__CUDA_ARCH__)
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#elif defined(STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_)
  warp_mma_emulated::LdMatrixX4<true>(r, row);
#endif
}

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_WARP_MMA_CUH_
