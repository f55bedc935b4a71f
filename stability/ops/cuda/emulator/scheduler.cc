// Launches on the emulated GPU: blocks one after another, each thread a fiber that runs
// until its next barrier (cuda_emulator.h). Fibers switch with a hand-written x86-64 context
// switch (callee-saved registers and the stack pointer): glibc's swapcontext makes a system
// call per switch, and a block reduction switches every thread about 15 times.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "stability/ops/cuda/emulator/cuda_emulator.h"
#include "stability/ops/cuda/emulator/internal/guarded_memory.h"
#include "stability/ops/cuda/emulator/internal/scheduler.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define STABILITY_EMU_ASAN 1
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator's context switch is written for x86-64"
#endif

// emu_switch(save, load): pushes the callee-saved registers, stores the stack pointer in
// *save, switches to the stack `load` and pops that context's registers; returns into it.
extern "C" void emu_switch(void** save, void* load);
// The linker's bounds of the section that holds every static __shared__ variable (none: null).
extern "C" unsigned char __start_emu_shared[] __attribute__((weak));
extern "C" unsigned char __stop_emu_shared[] __attribute__((weak));
asm(R"(
  .text
  .globl emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
)");

namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;  // a thread's stack (WMMA fragments are whole tiles here)
constexpr int kMaxThreads = 1024;
constexpr size_t kDefaultSharedBytes = 48 * 1024;  // without cudaFuncSetAttribute
constexpr size_t kMaxSharedBytes = 227 * 1024;     // sm_90's opt-in limit

enum class State { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  void* sp = nullptr;
  State state = State::kReady;
  uint3 tid{};
  int linear = 0;
  unsigned char* stack = nullptr;  // kStackBytes, a guard page below
  // Shuffle exchange slots, used alternately: a lane writing slot[p] for shuffle k + 2 has
  // passed shuffle k + 1's barrier, so every lane has read shuffle k's — one barrier a
  // shuffle, not two.
  alignas(16) unsigned char slot[2][16];
  int shuffles = 0;
};

struct Block {
  const char* kernel = "";
  uint3 bid{};
  dim3 grid, block;
  void* shared = nullptr;
  size_t shared_bytes = 0;
  ThreadBody body = nullptr;
  void* ctx = nullptr;
  std::vector<Fiber> fibers;
  bool reverse = false;  // this launch runs its blocks, and each block its threads, last first
  void* scheduler_sp = nullptr;
  Fiber* current = nullptr;
#ifdef STABILITY_EMU_ASAN
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
#endif
};

Block* running = nullptr;  // the launch in progress (launches do not nest)

std::mutex& LaunchMu() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::map<const void*, size_t>& SharedLimits() {
  static auto* limits = new std::map<const void*, size_t>;
  return *limits;
}
cudaError_t last_error = cudaSuccess;

Fiber& Current() {
  if (running == nullptr || running->current == nullptr) {
    std::fprintf(stderr, "CUDA emulator: a device intrinsic was called outside a kernel\n");
    std::abort();
  }
  return *running->current;
}

// Fiber → scheduler.
void Yield(State state) {
  Fiber& f = Current();
  f.state = state;
#ifdef STABILITY_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, running->main_stack_bottom, running->main_stack_size);
#endif
  emu_switch(&f.sp, running->scheduler_sp);
#ifdef STABILITY_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

[[noreturn]] void FiberMain() {
#ifdef STABILITY_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &running->main_stack_bottom, &running->main_stack_size);
#endif
  running->body(running->ctx);
  Fiber& f = Current();
  f.state = State::kDone;
#ifdef STABILITY_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, running->main_stack_bottom, running->main_stack_size);
#endif
  emu_switch(&f.sp, running->scheduler_sp);
  std::abort();  // a finished fiber is never resumed
}

// A fresh stack whose first switch "returns" into FiberMain with the ABI's alignment.
void* InitialStack(unsigned char* stack) {
  auto* top = reinterpret_cast<uintptr_t*>(stack + kStackBytes);
  top -= 2;  // [top-16]: FiberMain's return slot, 16-byte aligned, as after a call
  top[0] = reinterpret_cast<uintptr_t>(&FiberMain);
  top[1] = 0;
  top -= 6;  // r15, r14, r13, r12, rbx, rbp
  for (int i = 0; i < 6; ++i) top[i] = 0;
  return top;
}

std::vector<unsigned char*>& StackPool() {
  static auto* pool = new std::vector<unsigned char*>;
  return *pool;
}
unsigned char* StackFor(size_t i) {
  auto& pool = StackPool();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (pool.size() <= i) {
    void* base = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                      -1, 0);
    if (base == MAP_FAILED) {
      std::fprintf(stderr, "CUDA emulator: cannot map a thread stack\n");
      std::abort();
    }
    mprotect(base, page, PROT_NONE);  // a stack overflow faults
    pool.push_back(static_cast<unsigned char*>(base) + page);
  }
  return pool[i];
}

const char* StateName(State s) {
  switch (s) {
    case State::kReady: return "running";
    case State::kAtBlockBarrier: return "at __syncthreads";
    case State::kAtWarpBarrier: return "at a warp barrier (__syncwarp or a shuffle)";
    case State::kDone: return "exited";
  }
  return "?";
}

[[noreturn]] void Deadlock(Block& b) {
  std::string where;
  for (const Fiber& f : b.fibers) {
    if (f.linear % 32 == 0 || f.state != b.fibers[f.linear - f.linear % 32].state) {
      where += "  thread " + std::to_string(f.linear) + ": " + StateName(f.state) + "\n";
    }
  }
  std::fprintf(stderr,
               "CUDA emulator: kernel %s, block (%u, %u, %u): no thread can go on (a barrier some threads never "
               "reach):\n%s",
               b.kernel, b.bid.x, b.bid.y, b.bid.z, where.c_str());
  std::abort();
}

// Releases every barrier whose threads have all arrived; false if none has.
bool ReleaseBarriers(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  bool released = false;
  for (int w0 = 0; w0 < n; w0 += 32) {
    int waiting = 0, exited = 0, lanes = std::min(32, n - w0);
    for (int i = w0; i < w0 + lanes; ++i) {
      waiting += b.fibers[i].state == State::kAtWarpBarrier;
      exited += b.fibers[i].state == State::kDone;
    }
    if (waiting == 0 || waiting + exited < lanes) continue;
    if (exited > 0) {
      b.current = &b.fibers[w0];
      Fault("a full-warp __syncwarp or shuffle after a lane of the warp has exited (undefined on the GPU)");
    }
    for (int i = w0; i < w0 + lanes; ++i) b.fibers[i].state = State::kReady;
    released = true;
  }
  if (released) return true;
  int at_block = 0, alive = 0;
  for (const Fiber& f : b.fibers) {
    at_block += f.state == State::kAtBlockBarrier;
    alive += f.state != State::kDone;
  }
  if (at_block > 0 && at_block == alive) {
    for (Fiber& f : b.fibers) {
      if (f.state == State::kAtBlockBarrier) f.state = State::kReady;
    }
    return true;
  }
  return false;
}

void RunBlock(Block& b) {
  const int n = static_cast<int>(b.block.x * b.block.y * b.block.z);
  b.fibers.assign(n, Fiber{});
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.linear = i;
    f.tid = uint3{i % b.block.x, (i / b.block.x) % b.block.y, i / (b.block.x * b.block.y)};
    f.stack = StackFor(i);
    f.sp = InitialStack(f.stack);
  }
  // Shared memory holds garbage when a block starts: what the last block left, poisoned.
  if (b.shared_bytes > 0) std::memset(b.shared, 0xff, b.shared_bytes);
  if (__start_emu_shared != nullptr) std::memset(__start_emu_shared, 0xff, __stop_emu_shared - __start_emu_shared);
  for (;;) {
    bool ran = false;
    for (int i = 0; i < n; ++i) {
      Fiber& f = b.fibers[b.reverse ? n - 1 - i : i];
      if (f.state != State::kReady) continue;
      b.current = &f;
#ifdef STABILITY_EMU_ASAN
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
      emu_switch(&b.scheduler_sp, f.sp);
#ifdef STABILITY_EMU_ASAN
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
      b.current = nullptr;
      ran = true;
    }
    if (ran) continue;
    bool all_done = true;
    for (const Fiber& f : b.fibers) all_done = all_done && f.state == State::kDone;
    if (all_done) return;
    if (!ReleaseBarriers(b)) Deadlock(b);
  }
}

}  // namespace

uint3 ThreadIdx() { return Current().tid; }
uint3 BlockIdx() { return running->bid; }
dim3 BlockDim() { return running->block; }
dim3 GridDim() { return running->grid; }
int LaneId() { return Current().linear % 32; }
void* DynamicShared() { return running->shared; }
void SyncThreads() { Yield(State::kAtBlockBarrier); }
void SyncWarp(unsigned mask, const char* what) {
  if (mask != 0xffffffffu) Fault((std::string(what) + " with a partial mask (the emulator supports the full warp)").c_str());
  Yield(State::kAtWarpBarrier);
}
void* LaneSlot(int lane) {
  Fiber& f = Current();
  return running->fibers[f.linear - f.linear % 32 + lane].slot[f.shuffles % 2];
}
void NextShuffle() { ++Current().shuffles; }

void Fault(const char* what) {
  if (running == nullptr || running->current == nullptr) {
    std::fprintf(stderr, "CUDA emulator: %s\n", what);
  } else {
    const Fiber& f = *running->current;
    std::fprintf(stderr, "CUDA emulator: kernel %s, block (%u, %u, %u), thread (%u, %u, %u): %s\n", running->kernel,
                 running->bid.x, running->bid.y, running->bid.z, f.tid.x, f.tid.y, f.tid.z, what);
  }
  std::abort();
}

cudaError_t RunGrid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, ThreadBody body,
                    void* ctx) {
  std::lock_guard<std::mutex> lock(LaunchMu());
  const unsigned threads = block.x * block.y * block.z;
  cudaError_t error = cudaSuccess;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535) {
    error = cudaErrorInvalidConfiguration;
  } else {
    auto it = SharedLimits().find(kernel);
    const size_t limit = it == SharedLimits().end() ? kDefaultSharedBytes : it->second;
    if (shared_bytes > limit) error = cudaErrorInvalidValue;
  }
  if (error != cudaSuccess) {
    std::fprintf(stderr, "CUDA emulator: launch of %s refused: %s (grid %u×%u×%u, block %u×%u×%u, %zu bytes shared)\n",
                 name, cudaGetErrorString(error), grid.x, grid.y, grid.z, block.x, block.y, block.z, shared_bytes);
    last_error = error;
    return error;
  }
  Block b;
  b.kernel = name;
  b.grid = grid;
  b.block = block;
  b.body = body;
  b.ctx = ctx;
  b.shared_bytes = shared_bytes;
  b.shared = shared_bytes > 0 ? internal::GuardedAlloc(shared_bytes) : nullptr;
  // Every other launch in the opposite order: a kernel whose result depends on the order of
  // its blocks or threads (a missing barrier, a race between blocks) gives different bits
  // from one launch to the next, which the repeatability tests catch.
  static uint64_t launches = 0;
  b.reverse = launches++ % 2 == 1;
  running = &b;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t id = b.reverse ? blocks - 1 - i : i;
    b.bid = uint3{static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
                  static_cast<unsigned>(id / (uint64_t{grid.x} * grid.y))};
    RunBlock(b);
  }
  running = nullptr;
  if (b.shared) internal::GuardedFree(b.shared);
  return cudaSuccess;
}

namespace internal {

cudaError_t TakeLastError() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t PeekLastError() { return last_error; }

cudaError_t SetMaxDynamicShared(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxSharedBytes) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(LaunchMu());
  SharedLimits()[kernel] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

}  // namespace internal
}  // namespace emu
