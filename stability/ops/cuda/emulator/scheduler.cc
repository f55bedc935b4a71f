// Launches on the emulated GPU: blocks one after another, each thread a fiber that runs
// until its next barrier (cuda_emulator.h). Fibers switch with a hand-written x86-64 context
// switch (callee-saved registers and the stack pointer): glibc's swapcontext makes a system
// call per switch, and a block reduction switches every thread about 15 times.
#include "stability/ops/cuda/emulator/internal/scheduler.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "stability/ops/cuda/emulator/cuda_emulator.h"
#include "stability/ops/cuda/emulator/internal/guarded_memory.h"
#include "stability/ops/cuda/emulator/internal/instrumented.h"

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
  int shuffles = 0;                // selects the lane's exchange slot (internal::Coordinates)
  uint32_t block_epoch = 0, warp_epoch = 0;  // barriers passed (internal::Accessor)
  int memos = 0;                             // WarpMemo calls since its last barrier
  AsyncCopies async_copies;                  // cp.async's, not yet waited for
  unsigned char* stack = nullptr;  // kStackBytes, a guard page below
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
  std::vector<internal::LaneSlot> slots;  // one per thread
  // WarpMemo's slots: [warp][k], each tagged with the barrier interval that filled it.
  struct Memo {
    uint64_t interval = ~uint64_t{0};
    std::vector<unsigned char> bytes;
  };
  std::vector<std::vector<Memo>> memos;
  // The ready threads, in the order they will run (a ring of capacity fibers.size(): each
  // thread is in it at most once), and the barriers' counts, so that a barrier is released
  // the moment its last thread arrives, without scanning the block.
  std::vector<int> ready;
  size_t ready_head = 0, ready_count = 0;
  std::vector<int> warp_waiting, warp_exited;
  int block_waiting = 0, alive = 0;
  // Where the threads now waiting at __syncthreads called it (the first to arrive): every
  // thread of a block must wait at the same one (a barrier in code the block does not run
  // uniformly is undefined on the GPU; compute-sanitizer's synccheck reports it).
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  bool reverse = false;  // this launch runs its blocks, and each block its threads, last first
  uint32_t launch = 0;   // its number, from 1
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
// Every static __shared__ variable that has been used (RegisterShared).
std::vector<std::pair<void*, size_t>>& StaticShared() {
  static auto* vars = new std::vector<std::pair<void*, size_t>>;
  return *vars;
}
std::map<const void*, size_t>& SharedLimits() {
  static auto* limits = new std::map<const void*, size_t>;
  return *limits;
}
cudaError_t last_error = cudaSuccess;

// CUDA_EMULATOR_PROFILE=1: at exit, each kernel's launches, threads run and seconds, the most
// costly first: what makes an emulated test slow (the emulator's cost is per thread run).
struct KernelCost {
  uint64_t launches = 0, threads = 0;
  double seconds = 0;
};
class EmulatorProfile {
 public:
  static EmulatorProfile* Get() {
    static EmulatorProfile* profile = [] {
      const char* on = std::getenv("CUDA_EMULATOR_PROFILE");
      return on != nullptr && *on != '\0' && *on != '0' ? new EmulatorProfile : nullptr;
    }();
    return profile;
  }
  void Add(const char* kernel, uint64_t threads, double seconds) {
    KernelCost& c = costs_[kernel];
    ++c.launches;
    c.threads += threads;
    c.seconds += seconds;
  }

 private:
  EmulatorProfile() {
    std::atexit([] { Get()->Print(); });
  }
  void Print() const {
    std::vector<std::pair<std::string, KernelCost>> rows(costs_.begin(), costs_.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    std::fprintf(stderr, "CUDA emulator profile: %-40s %10s %14s %10s %8s\n", "kernel", "launches", "threads",
                 "seconds", "ns/thread");
    for (const auto& [name, c] : rows) {
      std::fprintf(stderr, "CUDA emulator profile: %-40s %10llu %14llu %10.3f %8.0f\n", name.c_str(),
                   static_cast<unsigned long long>(c.launches), static_cast<unsigned long long>(c.threads), c.seconds,
                   c.seconds * 1e9 / static_cast<double>(c.threads));
    }
  }
  std::map<std::string, KernelCost> costs_;
};

Fiber& Current() {
  if (running == nullptr || running->current == nullptr) {
    std::fprintf(stderr, "CUDA emulator: a device intrinsic was called outside a kernel\n");
    std::abort();
  }
  return *running->current;
}

// From the running context (fiber `from`, or the scheduler: nullptr) to fiber `to` (or the
// scheduler: nullptr). Fibers switch to each other directly; the scheduler is resumed only
// when every thread of the block has exited. Always inlined: an exiting fiber's last frame
// must be FiberMain's, which the next fiber on that stack lays out again (AddressSanitizer
// would otherwise find the stale redzones of a frame that never returned).
__attribute__((always_inline)) inline void SwitchTo(Block& b, Fiber* from, Fiber* to) {
  void** save = from ? &from->sp : &b.scheduler_sp;
  void* load = to ? to->sp : b.scheduler_sp;
  b.current = to;
  if (to != nullptr) {
    internal::coords.thread = to->tid;
    internal::coords.lane = to->linear % 32;
    internal::coords.warp_slots = &b.slots[to->linear - to->linear % 32];
    internal::coords.shuffles = &to->shuffles;
    internal::accessor.thread = to->linear;
    internal::accessor.block_epoch = &to->block_epoch;
    internal::accessor.warp_epoch = &to->warp_epoch;
    internal::accessor.stack = reinterpret_cast<uintptr_t>(to->stack);
  }
  internal::accessor.in_kernel = to != nullptr;
#ifdef STABILITY_EMU_ASAN
  void* fake = nullptr;
  const bool exiting = from != nullptr && from->state == State::kDone;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, to ? to->stack : b.main_stack_bottom,
                                 to ? kStackBytes : b.main_stack_size);
#endif
  emu_switch(save, load);
#ifdef STABILITY_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

const char* StateName(State s) {
  switch (s) {
    case State::kReady:
      return "running";
    case State::kAtBlockBarrier:
      return "at __syncthreads";
    case State::kAtWarpBarrier:
      return "at a warp barrier (__syncwarp or a shuffle)";
    case State::kDone:
      return "exited";
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

void Push(Block& b, Fiber& f) {
  f.state = State::kReady;
  b.ready[(b.ready_head + b.ready_count++) % b.ready.size()] = f.linear;
}

int LanesOf(const Block& b, int warp) { return std::min(32, static_cast<int>(b.fibers.size()) - 32 * warp); }

// Lanes of `warp` waiting at its barrier → ready, in run order.
void ReleaseWarp(Block& b, int warp) {
  const int lanes = LanesOf(b, warp);
  for (int i = 0; i < lanes; ++i) {
    Fiber& f = b.fibers[32 * warp + (b.reverse ? lanes - 1 - i : i)];
    if (f.state == State::kAtWarpBarrier) Push(b, f);
  }
  b.warp_waiting[warp] = 0;
}

// Threads waiting at __syncthreads → ready, in run order.
void ReleaseBlock(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[b.reverse ? n - 1 - i : i];
    if (f.state == State::kAtBlockBarrier) Push(b, f);
  }
  b.block_waiting = 0;
}

// After a lane arrived at its warp's barrier or exited: release the warp when every live
// lane is there (an exited lane with others waiting is undefined on the GPU: a fault).
void CheckWarp(Block& b, int warp) {
  const int waiting = b.warp_waiting[warp], exited = b.warp_exited[warp];
  if (waiting == 0 || waiting + exited < LanesOf(b, warp)) return;
  if (exited > 0) {
    b.current = &b.fibers[32 * warp];
    Fault("a full-warp __syncwarp or shuffle after a lane of the warp has exited (undefined on the GPU)");
  }
  ReleaseWarp(b, warp);
}
void CheckBlock(Block& b) {
  if (b.block_waiting > 0 && b.block_waiting == b.alive) ReleaseBlock(b);
}

// The next thread to run: the front of the ready ring; nullptr when every thread has exited.
Fiber* Next(Block& b) {
  if (b.ready_count == 0) {
    if (b.alive == 0) return nullptr;
    Deadlock(b);
  }
  Fiber& f = b.fibers[b.ready[b.ready_head]];
  b.ready_head = (b.ready_head + 1) % b.ready.size();
  --b.ready_count;
  return &f;
}

// Fiber → the next ready fiber (itself, if it is the only one).
void Yield(State state) {
  Block& b = *running;
  Fiber& f = Current();
  f.state = state;
  f.memos = 0;
  if (state == State::kAtWarpBarrier) {
    ++b.warp_waiting[f.linear / 32];
    CheckWarp(b, f.linear / 32);
  } else {
    ++f.block_epoch;
    ++b.block_waiting;
    CheckBlock(b);
  }
  Fiber* next = Next(b);
  if (next != &f) SwitchTo(b, &f, next);
}

[[noreturn]] void FiberMain() {
#ifdef STABILITY_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  running->body(running->ctx);
  Block& b = *running;
  Fiber& f = Current();
  // Its shared memory may be the next block's by the time they land (and nothing can read them).
  if (!f.async_copies.pending.empty()) Fault("the thread exited with cp.async copies it never waited for");
  f.state = State::kDone;
  --b.alive;
  ++b.warp_exited[f.linear / 32];
  CheckWarp(b, f.linear / 32);
  CheckBlock(b);  // exited threads do not hold __syncthreads up (as since Volta)
  SwitchTo(b, &f, Next(b));
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
    void* base =
        mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
      std::fprintf(stderr, "CUDA emulator: cannot map a thread stack\n");
      std::abort();
    }
    mprotect(base, page, PROT_NONE);  // a stack overflow faults
    pool.push_back(static_cast<unsigned char*>(base) + page);
  }
  return pool[i];
}

void RunBlock(Block& b) {
  const int n = static_cast<int>(b.block.x * b.block.y * b.block.z);
  b.fibers.assign(n, Fiber{});
  b.slots.assign(n, internal::LaneSlot{});
  b.memos.resize((n + 31) / 32);
  for (auto& warp : b.memos) {
    for (auto& memo : warp) memo.interval = ~uint64_t{0};
  }
  b.ready.assign(n, 0);
  b.ready_head = b.ready_count = 0;
  b.warp_waiting.assign((n + 31) / 32, 0);
  b.warp_exited.assign((n + 31) / 32, 0);
  b.block_waiting = 0;
  b.alive = n;
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.linear = i;
    f.tid = uint3{i % b.block.x, (i / b.block.x) % b.block.y, i / (b.block.x * b.block.y)};
    f.stack = StackFor(i);
    f.sp = InitialStack(f.stack);
  }
  internal::coords.block = b.bid;
  internal::accessor.block = b.bid.x + uint64_t{b.grid.x} * (b.bid.y + uint64_t{b.grid.y} * b.bid.z);
  internal::coords.block_dim = b.block;
  internal::coords.grid_dim = b.grid;
  // Shared memory holds garbage when a block starts: what the last block left, poisoned.
  if (b.shared_bytes > 0) std::memset(b.shared, 0xff, b.shared_bytes);
  for (const auto& [p, bytes] : StaticShared()) std::memset(p, 0xff, bytes);
  for (int i = 0; i < n; ++i) Push(b, b.fibers[b.reverse ? n - 1 - i : i]);
  SwitchTo(b, nullptr, Next(b));  // back when every thread has exited
}

}  // namespace

void* DynamicShared() { return running->shared; }
AsyncCopies& RunningAsyncCopies() { return Current().async_copies; }
void* WarpMemo(size_t bytes, bool* fresh) {
  Block& b = *running;
  Fiber& f = Current();
  auto& warp = b.memos[f.linear / 32];
  const size_t k = f.memos++;
  if (warp.size() <= k) warp.resize(k + 1);
  Block::Memo& memo = warp[k];
  // Every lane of a warp passes the same barriers: the counts name the interval.
  const uint64_t interval = uint64_t{f.block_epoch} << 32 | f.warp_epoch;
  *fresh = memo.interval != interval || memo.bytes.size() != bytes;
  if (*fresh) {
    memo.interval = interval;
    memo.bytes.resize(bytes);
  }
  return memo.bytes.data();
}
bool RegisterShared(void* p, size_t bytes) {
  std::memset(p, 0xff, bytes);
  StaticShared().emplace_back(p, bytes);
  if (internal::WatchMemory != nullptr) internal::WatchMemory(p, bytes, true);
  return true;
}
void SyncThreads(const char* file, int line) {
  Block& b = *running;
  if (b.block_waiting == 0) {
    b.barrier_file = file;
    b.barrier_line = line;
  } else if (line != b.barrier_line || std::strcmp(file, b.barrier_file) != 0) {
    const std::string what = "__syncthreads at " + std::string(file) + ":" + std::to_string(line) +
                             " while other threads of the block wait at the one at " + b.barrier_file + ":" +
                             std::to_string(b.barrier_line) + " (a barrier in code the block does not run uniformly)";
    Fault(what.c_str());
  }
  Yield(State::kAtBlockBarrier);
}
void SyncWarp(unsigned mask, const char* what, bool orders_memory) {
  if (mask != 0xffffffffu)
    Fault((std::string(what) + " with a partial mask (the emulator supports the full warp)").c_str());
  if (orders_memory) ++Current().warp_epoch;
  Yield(State::kAtWarpBarrier);
}

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
  if (b.shared != nullptr && internal::WatchMemory != nullptr) internal::WatchMemory(b.shared, shared_bytes, true);
  // Every other launch in the opposite order: a kernel whose result depends on the order of
  // its blocks or threads (a missing barrier, a race between blocks) gives different bits
  // from one launch to the next, which the repeatability tests catch.
  static uint32_t launches = 0;
  b.reverse = launches++ % 2 == 1;
  b.launch = launches;
  internal::accessor.launch = b.launch;
  internal::accessor.stack_bytes = kStackBytes;
#ifdef STABILITY_EMU_ASAN
  pthread_attr_t attr;
  void* stack_addr = nullptr;
  pthread_getattr_np(pthread_self(), &attr);
  pthread_attr_getstack(&attr, &stack_addr, &b.main_stack_size);
  pthread_attr_destroy(&attr);
  b.main_stack_bottom = stack_addr;
#endif
  running = &b;
  const auto start = std::chrono::steady_clock::now();
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t id = b.reverse ? blocks - 1 - i : i;
    b.bid = uint3{static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
                  static_cast<unsigned>(id / (uint64_t{grid.x} * grid.y))};
    RunBlock(b);
  }
  running = nullptr;
  if (b.shared) {
    if (internal::UnwatchMemory != nullptr) internal::UnwatchMemory(b.shared);
    internal::GuardedFree(b.shared);
  }
  if (internal::OnLaunchEnd != nullptr) internal::OnLaunchEnd(name);
  if (EmulatorProfile* profile = EmulatorProfile::Get()) {
    profile->Add(name, blocks * threads,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return cudaSuccess;
}

namespace internal {

Coordinates coords;
uint64_t tensor_core_flops = 0;
Accessor accessor;

cudaError_t TakeLastError() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

cudaError_t SetMaxDynamicShared(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxSharedBytes) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(LaunchMu());
  SharedLimits()[kernel] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

}  // namespace internal
}  // namespace emu
