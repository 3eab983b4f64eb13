// The scheduler of the SIMT emulator (csrc/emu/simt.h): fibers, block barriers, warp ops, errors.
#include "emu/simt.h"

#if defined(__SANITIZE_ADDRESS__)
#define FASTVAE_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

// Start and end of the static __shared__ section, defined by the linker (weak: a build without
// any static shared variable has no section).
extern "C" {
extern char __start_fastvae_emu_shared[] __attribute__((weak, visibility("hidden")));
extern char __stop_fastvae_emu_shared[] __attribute__((weak, visibility("hidden")));
}

// Fiber switches. On x86-64 a few instructions of our own: the callee-saved registers, MXCSR and
// the x87 control word pushed on the old stack, popped from the new one. ucontext's swapcontext
// also saves the signal mask, a system call per switch (some microseconds, most of the emulator's
// time), so it serves only as the fallback elsewhere.
#if defined(__x86_64__) && !defined(FASTVAE_EMU_UCONTEXT)
#define FASTVAE_EMU_ASM_SWITCH 1
extern "C" void fastvae_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl fastvae_emu_switch
  .hidden fastvae_emu_switch
  .type fastvae_emu_switch, @function
fastvae_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastvae_emu_switch, .-fastvae_emu_switch
)");
#endif

namespace fastvae {
namespace emu {

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

}  // namespace

Options& options() {
  static Options opts = [] {
    Options o;
    o.sm_count = env_int("FASTVAE_EMU_SMS", o.sm_count);
    o.max_grid_y = env_int("FASTVAE_EMU_MAX_GRID_Y", o.max_grid_y);
    o.reverse = env_int("FASTVAE_EMU_REVERSE", 0) != 0;
    return o;
  }();
  return opts;
}

namespace {
std::vector<std::string>& launch_log() {
  static std::vector<std::string> log;
  return log;
}
}  // namespace

std::vector<std::string> take_launch_log() {
  std::vector<std::string> out;
  out.swap(launch_log());
  return out;
}

namespace detail {

namespace {

constexpr unsigned char kPoison = 0xFF;   // NaN in every floating type
constexpr std::size_t kStackBytes = 256 * 1024;  // reserved, touched lazily
constexpr std::size_t kMaxThreads = 1024;
constexpr std::size_t kMaxDynamicShared = 48 * 1024;

enum class State : uint8_t { kReady, kBarrier, kWarp, kExited };

struct Fiber {
#ifdef FASTVAE_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  char* stack = nullptr;
  uint3 idx{0, 0, 0};
  State state = State::kExited;
  Site site{nullptr, 0};
  void* asan_fake = nullptr;
  // barrier
  int predicate = 0;
  int barrier_result = 0;
  // warp op
  WarpOpKind kind = WarpOpKind::kShfl;
  unsigned mask = 0;
  int param = 0, width = 32;
  std::size_t size = 0;
  alignas(16) unsigned char value[16];
  alignas(16) unsigned char result[16];
};

const char* op_name(WarpOpKind k) {
  switch (k) {
    case WarpOpKind::kShfl: return "__shfl_sync";
    case WarpOpKind::kShflUp: return "__shfl_up_sync";
    case WarpOpKind::kShflDown: return "__shfl_down_sync";
    case WarpOpKind::kShflXor: return "__shfl_xor_sync";
    case WarpOpKind::kSyncWarp: return "__syncwarp";
    case WarpOpKind::kBallot: return "__ballot_sync";
    case WarpOpKind::kAny: return "__any_sync";
    case WarpOpKind::kAll: return "__all_sync";
  }
  return "?";
}

std::string where(const Site& s) {
  std::ostringstream o;
  const char* f = s.file ? s.file : "?";
  const char* slash = std::strrchr(f, '/');
  o << (slash ? slash + 1 : f) << ":" << s.line;
  return o.str();
}

// Everything about the launch in progress. One launch runs at a time (run_grid holds a mutex),
// on the thread that made it.
struct Scheduler {
  std::vector<Fiber> fibers;  // the block's threads; the stacks stay mapped for reuse
#ifdef FASTVAE_EMU_ASM_SWITCH
  void* home = nullptr;
#else
  ucontext_t home;
#endif
  Fiber* current = nullptr;
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
  const LaunchConfig* cfg = nullptr;
  std::exception_ptr thread_error;  // thrown by a kernel thread, rethrown by the launch
  std::string error;                // found by the emulator in a kernel thread
  std::vector<unsigned char> dyn_shared;

  ~Scheduler() {
    for (auto& f : fibers)
      if (f.stack) munmap(f.stack, kStackBytes + 4096);
  }

  void ensure_fibers(std::size_t n) {
    while (fibers.size() < n) {
      fibers.emplace_back();
      // A guard page below each stack turns an overflow into a fault rather than silent corruption.
      void* p = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      TORCH_CHECK(p != MAP_FAILED, "fastvae emu: cannot map a fiber stack");
      mprotect(p, 4096, PROT_NONE);
      fibers.back().stack = static_cast<char*>(p);
    }
  }

  std::string who(const Fiber& f) const {
    std::ostringstream o;
    o << "thread (" << f.idx.x << "," << f.idx.y << "," << f.idx.z << ") of block (" << block_idx.x << ","
      << block_idx.y << "," << block_idx.z << ")";
    return o.str();
  }

  [[noreturn]] void fail(const std::string& what) {
    TORCH_CHECK(false, "fastvae emu: ", cfg->name, ": ", what);
  }

  // Back to the scheduler from a kernel thread.
  void yield() {
    Fiber* me = current;
    asan_leave(me->state == State::kExited ? nullptr : &me->asan_fake, home_bottom, home_size);
#ifdef FASTVAE_EMU_ASM_SWITCH
    fastvae_emu_switch(&me->sp, home);
#else
    swapcontext(&me->ctx, &home);
#endif
    asan_arrived(me->asan_fake, nullptr, nullptr);
  }

  void resume(Fiber& f) {
    current = &f;
    thread_idx = f.idx;
    asan_leave(&home_fake, f.stack + 4096, kStackBytes);
#ifdef FASTVAE_EMU_ASM_SWITCH
    fastvae_emu_switch(&home, f.sp);
#else
    swapcontext(&home, &f.ctx);
#endif
    asan_arrived(home_fake, nullptr, nullptr);
    current = nullptr;
  }

  // AddressSanitizer must be told of every switch of stacks (no-ops in other builds): leaving
  // (with where to keep the fake stack, null when the fiber ends) and arriving.
  const void* home_bottom = nullptr;  // the scheduler's stack, learnt when a fiber first starts
  std::size_t home_size = 0;
  void* home_fake = nullptr;
  static void asan_leave(void** fake, const void* bottom, std::size_t size) {
#ifdef FASTVAE_EMU_ASAN
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
  }
  static void asan_arrived(void* fake, const void** bottom_old, std::size_t* size_old) {
#ifdef FASTVAE_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, bottom_old, size_old);
#else
    (void)fake, (void)bottom_old, (void)size_old;
#endif
  }

  // A fresh start for fiber f at Scheduler::entry.
  void start(Fiber& f) {
#ifdef FASTVAE_EMU_ASAN
    // Frames that never returned (a fiber's entry, a block abandoned on an error) left their
    // red zones marked in the reused stack.
    ASAN_UNPOISON_MEMORY_REGION(f.stack + 4096, kStackBytes);
#endif
#ifdef FASTVAE_EMU_ASM_SWITCH
    // What fastvae_emu_switch pops: MXCSR and x87 control word, six registers, then the entry as
    // the return address, above it a null return address for entry itself (which never returns),
    // so that entry starts with the stack aligned as a call leaves it.
    auto* top = reinterpret_cast<uint64_t*>(f.stack + 4096 + kStackBytes);
    top[-1] = 0;
    top[-2] = reinterpret_cast<uint64_t>(&Scheduler::entry);
    for (int k = 3; k <= 8; ++k) top[-k] = 0;
    top[-9] = 0x1F80ull | (0x037Full << 32);  // MXCSR default, then the x87 control word default
    f.sp = top - 9;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack + 4096;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, &Scheduler::entry, 0);
#endif
  }

  // ---------------------------------------------------------------- warp ops
  // Lane l of warp w, or null when the block has no such thread.
  Fiber* lane(std::size_t warp, int l, std::size_t n) {
    const std::size_t i = warp * 32 + static_cast<std::size_t>(l);
    return i < n ? &fibers[i] : nullptr;
  }

  static bool same_op(const Fiber& a, const Fiber& b) {
    return a.kind == b.kind && a.mask == b.mask && a.width == b.width && a.size == b.size && a.site.line == b.site.line &&
           std::strcmp(a.site.file, b.site.file) == 0;
  }

  // The source lane of lane l, or l itself when the op reads its own value (out of its segment).
  static int source_lane(const Fiber& f, int l) {
    const int w = f.width, base = l / w * w;
    switch (f.kind) {
      case WarpOpKind::kShfl: return base + ((f.param % w) + w) % w;
      case WarpOpKind::kShflUp: return l - base >= f.param ? l - f.param : l;
      case WarpOpKind::kShflDown: return l - base + f.param < w ? l + f.param : l;
      case WarpOpKind::kShflXor: {
        const int s = l ^ f.param;
        return s >= base + w ? l : s;  // CUDA: a later segment is out of reach; an earlier one is not
      }
      default: return l;
    }
  }

  // Completes warp ops whose every named lane is waiting at the same op. True if any completed.
  bool resolve_warps(std::size_t n) {
    bool any = false;
    const std::size_t warps = (n + 31) / 32;
    for (std::size_t w = 0; w < warps; ++w) {
      for (int l = 0; l < 32; ++l) {
        Fiber* f = lane(w, l, n);
        if (!f || f->state != State::kWarp) continue;
        if (!(f->mask >> l & 1u))
          fail(who(*f) + ": " + op_name(f->kind) + " at " + where(f->site) + " has a mask without its own lane");
        bool ready = true;
        for (int m = 0; m < 32 && ready; ++m) {
          if (!(f->mask >> m & 1u)) continue;
          Fiber* g = lane(w, m, n);
          if (!g || g->state == State::kExited) {
            std::ostringstream o;
            o << who(*f) << ": " << op_name(f->kind) << " at " << where(f->site) << " names lane " << m
              << " (mask 0x" << std::hex << f->mask << ")" << std::dec << ", which "
              << (g ? "has exited" : "does not exist in this block");
            fail(o.str());
          }
          ready = g->state == State::kWarp && same_op(*f, *g);
        }
        if (!ready) continue;
        complete(w, *f, n);
        any = true;
      }
    }
    return any;
  }

  void complete(std::size_t w, const Fiber& op, std::size_t n) {
    const unsigned mask = op.mask;
    unsigned votes = 0;
    for (int m = 0; m < 32; ++m)
      if (mask >> m & 1u) {
        unsigned v;
        std::memcpy(&v, lane(w, m, n)->value, sizeof(v));
        if (v) votes |= 1u << m;
      }
    if (op.width < 1 || op.width > 32 || (op.width & (op.width - 1)) != 0)
      fail(who(op) + ": " + op_name(op.kind) + " at " + where(op.site) + " has width " + std::to_string(op.width) +
           ", not a power of two up to 32");
    for (int m = 0; m < 32; ++m) {
      if (!(mask >> m & 1u)) continue;
      Fiber* g = lane(w, m, n);
      switch (op.kind) {
        case WarpOpKind::kSyncWarp: break;
        case WarpOpKind::kBallot: std::memcpy(g->result, &votes, sizeof(votes)); break;
        case WarpOpKind::kAny: {
          const unsigned r = votes != 0;
          std::memcpy(g->result, &r, sizeof(r));
          break;
        }
        case WarpOpKind::kAll: {
          const unsigned r = votes == mask;
          std::memcpy(g->result, &r, sizeof(r));
          break;
        }
        default: {
          const int s = source_lane(*g, m);
          if (!(mask >> s & 1u)) {
            std::ostringstream o;
            o << who(*g) << ": " << op_name(op.kind) << " at " << where(op.site) << " reads lane " << s
              << ", which is not in its mask 0x" << std::hex << mask;
            fail(o.str());
          }
          std::memcpy(g->result, lane(w, s, n)->value, op.size);
        }
      }
    }
    for (int m = 0; m < 32; ++m)
      if (mask >> m & 1u) lane(w, m, n)->state = State::kReady;
  }

  // Nothing can run: say why, naming a waiting thread and what it waits for.
  [[noreturn]] void diagnose(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      const Fiber& f = fibers[i];
      if (f.state != State::kWarp) continue;
      const std::size_t w = i / 32;
      for (int m = 0; m < 32; ++m) {
        if (!(f.mask >> m & 1u)) continue;
        const Fiber* g = lane(w, m, n);
        if (g->state == State::kWarp && same_op(f, *g)) continue;
        std::ostringstream o;
        o << "divergence: " << who(f) << " waits at " << op_name(f.kind) << " (" << where(f.site) << ", mask 0x"
          << std::hex << f.mask << std::dec << ") for lane " << m << ", which waits at "
          << (g->state == State::kBarrier ? std::string("__syncthreads (") + where(g->site) + ")"
                                          : std::string(op_name(g->kind)) + " (" + where(g->site) + ")");
        fail(o.str());
      }
    }
    std::ostringstream o;
    o << "deadlock: a __syncthreads that can never complete;";
    int shown = 0;
    for (std::size_t i = 0; i < n && shown < 4; ++i)
      if (fibers[i].state == State::kBarrier && !same_site(fibers[i].site, first_barrier_site(n))) {
        o << " " << who(fibers[i]) << " waits at " << where(fibers[i].site) << ";";
        ++shown;
      }
    o << " others wait at " << where(first_barrier_site(n));
    fail(o.str());
  }

  static bool same_site(const Site& a, const Site& b) {
    return a.line == b.line && std::strcmp(a.file, b.file) == 0;
  }
  Site first_barrier_site(std::size_t n) const {
    for (std::size_t i = 0; i < n; ++i)
      if (fibers[i].state == State::kBarrier) return fibers[i].site;
    return {"?", 0};
  }

  // All live threads at one __syncthreads: release them. True if released.
  bool release_barrier(std::size_t n) {
    bool any = false;
    Site site{nullptr, 0};
    int count = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const Fiber& f = fibers[i];
      if (f.state == State::kExited) continue;
      if (f.state != State::kBarrier) return false;
      if (!any) site = f.site;
      else if (!same_site(site, f.site)) return false;
      any = true;
      count += f.predicate;
    }
    if (!any) return false;
    for (std::size_t i = 0; i < n; ++i)
      if (fibers[i].state == State::kBarrier) {
        fibers[i].barrier_result = count;
        fibers[i].state = State::kReady;
      }
    return true;
  }

  void run_block(std::size_t n) {
    const bool reverse = options().reverse;
    if (__start_fastvae_emu_shared && __stop_fastvae_emu_shared)
      std::memset(__start_fastvae_emu_shared, kPoison, __stop_fastvae_emu_shared - __start_fastvae_emu_shared);
    std::memset(dyn_shared.data(), kPoison, dyn_shared.size());
    for (std::size_t i = 0; i < n; ++i) {
      Fiber& f = fibers[i];
      start(f);
      f.idx = {static_cast<unsigned>(i % block_dim.x), static_cast<unsigned>(i / block_dim.x % block_dim.y),
               static_cast<unsigned>(i / (block_dim.x * block_dim.y))};
      f.state = State::kReady;
    }
    for (;;) {
      for (std::size_t k = 0; k < n; ++k) {
        Fiber& f = fibers[reverse ? n - 1 - k : k];
        if (f.state != State::kReady) continue;
        resume(f);
        if (thread_error) std::rethrow_exception(std::exchange(thread_error, nullptr));
        if (!error.empty()) fail(std::exchange(error, std::string()));
      }
      bool live = false;
      for (std::size_t i = 0; i < n && !live; ++i) live = fibers[i].state != State::kExited;
      if (!live) return;
      if (resolve_warps(n)) continue;
      if (release_barrier(n)) continue;
      diagnose(n);
    }
  }

  static void entry();
};

Scheduler& sched() {
  static Scheduler s;
  return s;
}

void Scheduler::entry() {
  Scheduler& s = sched();
  asan_arrived(nullptr, &s.home_bottom, &s.home_size);
  try {
    s.body(s.arg);
  } catch (...) {
    s.thread_error = std::current_exception();
  }
  s.current->state = State::kExited;
  s.yield();  // never resumed
  std::abort();
}

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

void misaligned(const void* p, std::size_t bytes) {
  Scheduler& s = sched();
  std::ostringstream o;
  o << "misaligned address: a " << bytes << "-byte vector access at " << p;
  if (!s.current) TORCH_CHECK(false, "fastvae emu: ", o.str());
  s.error = s.who(*s.current) + ": " + o.str();
  s.current->state = State::kExited;
  s.yield();
  std::abort();  // an aborted block is never resumed
}

int block_barrier(int predicate, Site site) {
  Scheduler& s = sched();
  Fiber* f = s.current;
  f->state = State::kBarrier;
  f->site = site;
  f->predicate = predicate;
  s.yield();
  return f->barrier_result;
}

void warp_op(WarpOpKind kind, unsigned mask, const void* value, void* out, std::size_t size, int param, int width,
             Site site) {
  Scheduler& s = sched();
  Fiber* f = s.current;
  f->state = State::kWarp;
  f->kind = kind;
  f->mask = mask;
  f->param = param;
  f->width = width;
  f->size = size;
  f->site = site;
  std::memset(f->value, 0, sizeof(f->value));
  std::memcpy(f->value, value, size);
  s.yield();
  if (kind != WarpOpKind::kSyncWarp) std::memcpy(out, f->result, size);
}

void* dynamic_shared() { return sched().dyn_shared.data(); }

void run_grid(const LaunchConfig& cfg, void (*thread_body)(void*), void* arg) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  Scheduler& s = sched();
  s.cfg = &cfg;
  const Options& o = options();
  const unsigned long long threads = 1ull * cfg.block.x * cfg.block.y * cfg.block.z;
  const unsigned long long blocks = 1ull * cfg.grid.x * cfg.grid.y * cfg.grid.z;
  // CUDA's limits (the y and z grid limits as configured), so a launch the GPU refuses fails here.
  if (threads == 0 || threads > kMaxThreads || cfg.block.z > 64 || blocks == 0 || cfg.grid.x > 0x7fffffffu ||
      cfg.grid.y > static_cast<unsigned>(o.max_grid_y) || cfg.grid.z > static_cast<unsigned>(o.max_grid_y) ||
      cfg.smem > kMaxDynamicShared) {
    std::ostringstream m;
    m << "invalid launch configuration: grid (" << cfg.grid.x << "," << cfg.grid.y << "," << cfg.grid.z
      << "), block (" << cfg.block.x << "," << cfg.block.y << "," << cfg.block.z << "), " << cfg.smem
      << " bytes of dynamic shared memory (max grid y/z " << o.max_grid_y << ")";
    s.fail(m.str());
  }
  {
    std::ostringstream m;
    m << cfg.grid.x << "," << cfg.grid.y << "," << cfg.grid.z << " " << cfg.block.x << " " << cfg.name << " @ "
      << cfg.where;
    if (launch_log().size() < 100000) launch_log().push_back(m.str());
  }
  s.ensure_fibers(threads);
  s.body = thread_body;
  s.arg = arg;
  s.dyn_shared.assign(cfg.smem, kPoison);
  grid_dim = cfg.grid;
  block_dim = cfg.block;
  for (unsigned long long k = 0; k < blocks; ++k) {
    const unsigned long long b = o.reverse ? blocks - 1 - k : k;
    block_idx = {static_cast<unsigned>(b % cfg.grid.x), static_cast<unsigned>(b / cfg.grid.x % cfg.grid.y),
                 static_cast<unsigned>(b / (1ull * cfg.grid.x * cfg.grid.y))};
    s.run_block(threads);
  }
}

}  // namespace detail
}  // namespace emu
}  // namespace fastvae
