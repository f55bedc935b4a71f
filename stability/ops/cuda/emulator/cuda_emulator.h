// The CUDA emulator: our .cu files compiled by the host compiler and run on the CPU, so that
// CI (which has no GPU) runs every CUDA kernel against the CPU backend.
//
// How: cuda_emulated_library (tools/cuda_emulator.bzl) rewrites each .cu file's launches
// `K<<<grid, block, smem>>>(args)` into `::emu::Launch(K, "K", grid, block, smem)(args)`
// and its `extern __shared__ T name[];` into a pointer to the launch's dynamic shared memory
// (to_host_cpp.py), then compiles it as C++ with this header included first. A launch runs
// its blocks one after another; each thread of a block is a fiber with its own stack, and
// the fibers switch only at barriers (__syncthreads, __syncwarp, the shuffles), so a block
// runs exactly as written, one thread after another between barriers — every other launch
// last block and last thread first, so that a result that depends on the order changes
// between two runs of the same op. Shared memory is poisoned (0xff) before each block. WMMA
// is emulated with whole-tile fragments; mma.sync and ldmatrix (internal/warp_mma.cuh) by a
// gather of the warp's registers at one warp barrier (WarpAllGather); cp.async copies land at
// the wait that completes them, their bytes poisoned from issue until then (internal/cp_async.cuh,
// AsyncCopies; a thread that exits with copies it never waited for faults); cuBLAS and cuBLASLt by products on the CPU
// (cublas.cc); device memory is host memory, NaN-filled, each block ending at a guard page.
//
// What it proves: each kernel's indexing, tiling, masking, barriers, shuffles, shared-memory
// layout and alignment, and the host code around it (launch configurations, plans, scratch,
// copies), in the kernel's own arithmetic order; built with racecheck (racecheck.cc), that no
// two accesses race. What it cannot: speed, the GPU's rounding of expf/logf (the host's libm
// here) and the tensor cores' summation order. What would be undefined or a fault on a GPU
// aborts, naming the kernel, block and thread: WMMA pointers not 32-byte aligned, a shuffle or
// __syncwarp after a lane has exited, a barrier not every thread reaches, threads of a block
// waiting at different __syncthreads, an access past a buffer (the guard page). Launches a GPU
// refuses are refused with its error (cudaGetLastError): more than 1,024 threads a block,
// dynamic shared memory over 48 KB without cudaFuncSetAttribute.
#ifndef STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_
#define STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// nvcc's keywords as host C++. __shared__ variables are static (a block's threads share
// them, and blocks run one at a time); to_host_cpp.py registers each with RegisterShared,
// and the scheduler fills them with 0xff bytes before each block, as a GPU leaves shared
// memory holding garbage.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace emu {
namespace internal {

// A lane's shuffle exchange slots, used alternately: a lane writing slot p for shuffle
// k + 2 has passed shuffle k + 1's barrier, so every lane has read shuffle k's (one barrier
// a shuffle, not two).
struct LaneSlot {
  alignas(16) unsigned char bytes[2][64];  // a shuffle's value (16 bytes), a gather's (64)
};
// The running thread's coordinates, set by the scheduler at every switch (read inline: the
// intrinsics run millions of times a test).
struct Coordinates {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
  int lane = 0;
  LaneSlot* warp_slots = nullptr;  // lane 0's of this warp
  int* shuffles = nullptr;         // this lane's shuffle count
};
extern Coordinates coords;
// The flops of the WMMA products since the last launch ended (a warp's product counted once),
// for the traffic counter (traffic.h).
extern uint64_t tensor_core_flops;

}  // namespace internal

// Barriers: every live thread of the block / every lane of the warp (all must be live).
// __syncthreads, with where it is called (every thread of a block must wait at the same one).
void SyncThreads(const char* file, int line);
// A warp barrier: __syncwarp (orders the lanes' memory accesses) or a shuffle (exchanges
// values; to the race checker, no ordering of memory, as the CUDA guide promises none).
void SyncWarp(unsigned mask, const char* what, bool orders_memory);
inline int LaneId() { return internal::coords.lane; }
// The launch's dynamic shared memory (its size as launched, then a guard page).
void* DynamicShared();
// A static __shared__ variable, on its first use (to_host_cpp.py's registration): filled
// with 0xff now and before every block. Returns true.
bool RegisterShared(void* p, size_t bytes);
// The k-th scratch slot of the running warp in this barrier interval, k this lane's calls
// since its last barrier: what one lane computed for a warp-wide operation, for the other
// lanes to reuse (WMMA's mma_sync). *fresh: no lane has filled it in this interval.
void* WarpMemo(size_t bytes, bool* fresh);
// Device work of an emulated library (cuBLAS) outside kernels: the bytes of device memory its
// arguments say it reads and writes, and its flops (for the traffic counter, traffic.h).
void LibraryWork(const char* what, double bytes_read, double bytes_written, double flops);
// A fault: the running kernel's name, the thread, the message; then abort.
[[noreturn]] void Fault(const char* what);

using ThreadBody = void (*)(void*);
// Runs body(ctx) for every thread of every block (see above); returns the launch error.
cudaError_t RunGrid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, ThreadBody body,
                    void* ctx);

// A launch: `kernel` is the kernel's address, or for a template kernel whose arguments
// deduce its parameters (nvcc deduces them at `<<<`) a generic lambda calling it.
template <typename F>
class Launcher {
 public:
  Launcher(F kernel, const void* address, const char* name, dim3 grid, dim3 block, size_t shared_bytes)
      : kernel_(kernel), address_(address), name_(name), grid_(grid), block_(block), shared_bytes_(shared_bytes) {}

  template <typename... A>
  void operator()(A&&... args) const {
    struct Call {
      F kernel;
      std::tuple<std::decay_t<A>...> args;
    } call{kernel_, std::tuple<std::decay_t<A>...>(std::forward<A>(args)...)};
    const ThreadBody body = [](void* ctx) {
      // Each thread's by-value parameters are copies of the launch's arguments, as on a GPU;
      // the structs a .cu declares arrive by const reference (to_host_cpp.py): not copied.
      auto* c = static_cast<Call*>(ctx);
      std::apply(c->kernel, std::as_const(c->args));
    };
    RunGrid(name_, address_, grid_, block_, shared_bytes_, body, &call);
  }

 private:
  F kernel_;
  const void* address_;
  const char* name_;
  dim3 grid_, block_;
  size_t shared_bytes_;
};

template <typename... P>
Launcher<void (*)(P...)> Launch(void (*kernel)(P...), const char* name, dim3 grid, dim3 block, size_t shared_bytes = 0,
                                cudaStream_t = nullptr) {
  return Launcher<void (*)(P...)>(kernel, reinterpret_cast<const void*>(kernel), name, grid, block, shared_bytes);
}
template <typename F>
requires std::is_class_v<F> Launcher<F> Launch(F kernel, const char* name, dim3 grid, dim3 block,
                                               size_t shared_bytes = 0, cudaStream_t = nullptr) {
  return Launcher<F>(kernel, nullptr, name, grid, block, shared_bytes);
}

template <typename T>
T Shuffle(unsigned mask, T v, int lane_mask_or_delta, bool is_xor, int width) {
  static_assert(sizeof(T) <= 16, "shuffled values are at most 16 bytes");
  if (mask != 0xffffffffu) Fault("a shuffle with a partial mask (the emulator supports the full warp only)");
  const int lane = internal::coords.lane, p = *internal::coords.shuffles & 1;
  internal::LaneSlot* slots = internal::coords.warp_slots;
  std::memcpy(slots[lane].bytes[p], &v, sizeof(T));
  SyncWarp(mask, "a shuffle", /*orders_memory=*/false);
  int src = is_xor ? (lane ^ lane_mask_or_delta) : lane + lane_mask_or_delta;
  // Outside the lane's width-segment: its own value, as on the GPU.
  if (src / width != lane / width || src >= 32) src = lane;
  T r;
  std::memcpy(&r, slots[src].bytes[p], sizeof(T));
  ++*internal::coords.shuffles;
  return r;
}

// cp.async (internal/cp_async.cuh): the running thread's asynchronous copies to shared memory
// that no cp.async.wait_group has completed yet, in issue order, and its committed groups. The
// copies themselves run in the kernel's own (instrumented) code, at the wait: the latest a GPU
// may complete them, so that a read before the wait sees the poison written at issue.
struct AsyncCopy {
  void* dst;
  const void* src;
  uint32_t bytes, src_bytes;  // bytes past src_bytes are zeros
  int group;                  // the committed group it belongs to (committed: not yet)
};
struct AsyncCopies {
  std::vector<AsyncCopy> pending;
  int committed = 0;
};
AsyncCopies& RunningAsyncCopies();

// Every lane's `mine` into all[lane], one warp barrier (as a shuffle: no ordering of memory):
// the emulation of the warp-collective PTX instructions (mma.sync, ldmatrix; warp_mma.cuh),
// whose operands the GPU spreads over the lanes' registers.
template <typename T>
void WarpAllGather(const T& mine, T (&all)[32]) {
  static_assert(sizeof(T) <= sizeof(internal::LaneSlot::bytes[0]), "a lane's gathered value is at most 64 bytes");
  const int lane = internal::coords.lane, p = *internal::coords.shuffles & 1;
  internal::LaneSlot* slots = internal::coords.warp_slots;
  std::memcpy(slots[lane].bytes[p], &mine, sizeof(T));
  SyncWarp(0xffffffffu, "a warp-collective instruction", /*orders_memory=*/false);
  for (int i = 0; i < 32; ++i) std::memcpy(&all[i], slots[i].bytes[p], sizeof(T));
  ++*internal::coords.shuffles;
}

}  // namespace emu

#define threadIdx (::emu::internal::coords.thread)
#define blockIdx (::emu::internal::coords.block)
#define blockDim (::emu::internal::coords.block_dim)
#define gridDim (::emu::internal::coords.grid_dim)
#define warpSize 32

// cuda_runtime.h's C++ overload (nvcc only): a kernel's address as the C API takes it.
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

template <typename... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*kernel)(P...), int block_size,
                                                          size_t dynamic_shared) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, reinterpret_cast<const void*>(kernel), block_size,
                                                       dynamic_shared);
}

#define __syncthreads() ::emu::SyncThreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::SyncWarp(mask, "__syncwarp", /*orders_memory=*/true); }
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::emu::Shuffle(mask, v, lane_mask, true, width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::emu::Shuffle(mask, v, static_cast<int>(delta), false, width);
}

// Correctly rounded operations: the build has FMA contraction off (.bazelrc), so the
// plain operators are each rounded once, as the intrinsics promise.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline float __expf(float a) { return std::exp(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __logf(float a) { return std::log(a); }

// WMMA with whole-tile fragments: each lane holds the whole tile (the GPU spreads it over
// the warp), loads and multiplies it itself and stores its share of the elements (index
// mod 32 = lane), so a read of a stored tile before __syncwarp sees other lanes' stale
// values, as it could on the GPU.
// Fragments are a thread's own (its stack): not watched by the race checker, whose calls on
// every element of a 16×16×16 product would cost more than the product.
#define STABILITY_EMU_FRAGMENT_ONLY __attribute__((no_sanitize("thread")))
// An instrumented build's entry for a range (tsan_entry_points.cc; null where it is not linked).
extern "C" void __tsan_read_range(void* p, unsigned long bytes) __attribute__((weak));

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = kRows * kCols;
  T x[num_elements];  // row-major
};

namespace internal {
inline void CheckPointer(const void* p, unsigned ldm, size_t element_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) ::emu::Fault(what);  // 256-bit aligned, as WMMA requires
  if ((ldm * element_bytes) % 16 != 0) ::emu::Fault(what);           // ldm: a multiple of 16 bytes
}
}  // namespace internal

template <typename Use, int M, int N, int K, typename T, typename Layout>
STABILITY_EMU_FRAGMENT_ONLY void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T v) {
  for (T& e : f.x) e = v;
}

// The race checker sees each tile read by lanes 0 and 1 only (a whole tile a lane, checked
// 32 times, would cost more than the rest of a kernel): a lane's unordered store is still a
// read of another lane's, as on the GPU, whose fragments spread a tile over the lanes.
template <typename Use, int M, int N, int K, typename T, typename Layout>
STABILITY_EMU_FRAGMENT_ONLY void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  internal::CheckPointer(p, ldm, sizeof(T), "wmma::load_matrix_sync: pointer not 32-byte aligned or ldm not 16 bytes");
  if (__tsan_read_range != nullptr && ::emu::LaneId() < 2) {
    constexpr bool kColMajor = std::is_same_v<Layout, col_major>;
    for (int line = 0; line < (kColMajor ? F::kCols : F::kRows); ++line) {
      __tsan_read_range(const_cast<T*>(p) + line * ldm, (kColMajor ? F::kRows : F::kCols) * sizeof(T));
    }
  }
  // Every lane loads the whole tile, usually the same one: the first to run loads it, the
  // others of its warp find its pointer and ldm in the warp's memo and copy its fragment. In
  // one barrier interval the tile cannot change without a race (which racecheck builds find).
  struct Key {
    const T* p;
    uint64_t ldm;  // no padding: keys are compared bytewise
  };
  const Key key{p, ldm};
  bool fresh = false;
  auto* memo = static_cast<unsigned char*>(::emu::WarpMemo(sizeof(Key) + sizeof(f.x), &fresh));
  if (!fresh && std::memcmp(memo, &key, sizeof(Key)) == 0) {
    std::memcpy(f.x, memo + sizeof(Key), sizeof(f.x));
    return;
  }
  for (int r = 0; r < F::kRows; ++r) {
    for (int c = 0; c < F::kCols; ++c) {
      f.x[r * F::kCols + c] = std::is_same_v<Layout, col_major> ? p[c * ldm + r] : p[r * ldm + c];
    }
  }
  std::memcpy(memo, &key, sizeof(Key));
  std::memcpy(memo + sizeof(Key), f.x, sizeof(f.x));
}

template <int M, int N, int K, typename T>
void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  internal::CheckPointer(p, ldm, sizeof(T), "wmma::store_matrix_sync: pointer not 32-byte aligned or ldm not 16 bytes");
  const int lane = ::emu::LaneId();
  for (int i = lane; i < M * N; i += 32) {
    const int r = i / N, c = i % N;
    (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[i];
  }
}

template <int M, int N, int K, typename T, typename LA, typename LB>
STABILITY_EMU_FRAGMENT_ONLY void mma_sync(fragment<accumulator, M, N, K, float>& d,
                                          const fragment<matrix_a, M, N, K, T, LA>& a,
                                          const fragment<matrix_b, M, N, K, T, LB>& b,
                                          const fragment<accumulator, M, N, K, float>& c) {
  // Each lane holds the whole tiles, so every lane of a warp usually multiplies the same
  // ones: the first computes, the others find its operands (bitwise) and result in the
  // warp's memo; a lane whose operands differ computes its own.
  if (::emu::LaneId() == 0) ::emu::internal::tensor_core_flops += 2 * M * N * K;
  constexpr size_t kA = sizeof(a.x), kB = sizeof(b.x), kC = sizeof(c.x), kD = sizeof(d.x);
  bool fresh = false;
  auto* memo = static_cast<unsigned char*>(::emu::WarpMemo(kA + kB + kC + kD, &fresh));
  if (!fresh && std::memcmp(memo, a.x, kA) == 0 && std::memcmp(memo + kA, b.x, kB) == 0 &&
      std::memcmp(memo + kA + kB, c.x, kC) == 0) {
    std::memcpy(d.x, memo + kA + kB + kC, kD);
    return;
  }
  std::memcpy(memo, a.x, kA);  // before d is written: d may be c
  std::memcpy(memo + kA, b.x, kB);
  std::memcpy(memo + kA + kB, c.x, kC);
  // Operands widened first (bf16 by its bits: the conversion operator would be a call here).
  float fa[M * K], fb[K * N], out[M * N];
  const auto widen = [](T v) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      uint16_t bits;
      std::memcpy(&bits, &v, sizeof(bits));
      const uint32_t wide = uint32_t{bits} << 16;
      float f;
      std::memcpy(&f, &wide, sizeof(f));
      return f;
    } else {
      return static_cast<float>(v);
    }
  };
  for (int i = 0; i < M * K; ++i) fa[i] = widen(a.x[i]);
  for (int i = 0; i < K * N; ++i) fb[i] = widen(b.x[i]);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k) acc += fa[i * K + k] * fb[k * N + j];
      out[i * N + j] = acc;
    }
  }
  std::memcpy(d.x, out, sizeof(out));
  std::memcpy(memo + kA + kB + kC, out, kD);
}

}  // namespace nvcuda::wmma

#endif  // STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_
