// SIMT emulation of the CUDA kernels on the CPU (fastvae._C_emu; see csrc/emu/README.md).
//
// Included only when csrc/cuda/*.cu is compiled as C++ with FASTVAE_EMU defined. Every CUDA thread
// of a launch runs as a fiber (its own small stack); the blocks of a grid run one after another,
// the threads of a block interleaved at their synchronisation points only:
//   __syncthreads            all live threads of the block at one barrier, then all go on
//   __shfl*_sync, __syncwarp every lane named in the mask at the same warp op, then all go on
// Between those points threads run one at a time, in thread order (or reversed: options().reverse),
// so a missing barrier makes a reader see memory its writer has not written yet. Static __shared__
// and dynamic shared memory are filled with a poison value (all bytes 0xFF: NaN as float) before each
// block. A shuffle naming a lane that exited or waits elsewhere, a barrier that can never complete,
// a misaligned 8- or 16-byte vector access, and a launch configuration CUDA would refuse all throw
// c10::Error from the launch, so that the test that ran the kernel fails.
#pragma once

#include <c10/util/Exception.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>
#include <type_traits>
#include <typeinfo>
#include <utility>

#ifndef FASTVAE_EMU
#error "csrc/emu/simt.h is for the emulation build (FASTVAE_EMU) only"
#endif

// ---------------------------------------------------------------- CUDA keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// Static shared variables live in one ELF section, which the scheduler poisons before every block:
// blocks run one after another, so one copy per variable is the block's own. GCC ignores the
// section for a static inside a function template (a COMDAT variable, e.g. block_sum's
// warp_sums): such a variable starts each block with what the previous block left, not poison.
#define __shared__ static __attribute__((section("fastvae_emu_shared"), aligned(16)))

// ---------------------------------------------------------------- vector types
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

namespace fastvae {
namespace emu {
namespace detail {
// Reports a misaligned vector access of the running emulated thread (CUDA: "misaligned address").
[[noreturn]] void misaligned(const void* p, std::size_t bytes);
template <std::size_t Bytes>
inline void check_aligned(const void* p) {
  if (reinterpret_cast<std::uintptr_t>(p) % Bytes != 0) misaligned(p, Bytes);
}
}  // namespace detail
}  // namespace emu
}  // namespace fastvae

// 8- and 16-byte vector types check, like the GPU, that every copy from or to memory is aligned:
// a kernel that took the packed path for a misaligned pointer fails here instead of running.
#define FASTVAE_EMU_VECTOR(name, T, n, ...)                                                       \
  struct alignas(sizeof(T) * n) name {                                                           \
    T __VA_ARGS__;                                                                               \
    name() = default;                                                                            \
    name(const name& o) { ::fastvae::emu::detail::check_aligned<sizeof(T) * n>(&o); std::memcpy(this, &o, sizeof(name)); } \
    name& operator=(const name& o) {                                                             \
      ::fastvae::emu::detail::check_aligned<sizeof(T) * n>(this);                                \
      ::fastvae::emu::detail::check_aligned<sizeof(T) * n>(&o);                                  \
      std::memcpy(static_cast<void*>(this), &o, sizeof(name));                                   \
      return *this;                                                                              \
    }                                                                                            \
  };
FASTVAE_EMU_VECTOR(uint2, unsigned, 2, x, y)
FASTVAE_EMU_VECTOR(uint4, unsigned, 4, x, y, z, w)
FASTVAE_EMU_VECTOR(int2, int, 2, x, y)
FASTVAE_EMU_VECTOR(int4, int, 4, x, y, z, w)
FASTVAE_EMU_VECTOR(float2, float, 2, x, y)
FASTVAE_EMU_VECTOR(float4, float, 4, x, y, z, w)
FASTVAE_EMU_VECTOR(double2, double, 2, x, y)
#undef FASTVAE_EMU_VECTOR

inline uint2 make_uint2(unsigned x, unsigned y) { uint2 v; v.x = x; v.y = y; return v; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { uint4 v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }
inline float2 make_float2(float x, float y) { float2 v; v.x = x; v.y = y; return v; }
inline float4 make_float4(float x, float y, float z, float w) { float4 v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }
inline double2 make_double2(double x, double y) { double2 v; v.x = x; v.y = y; return v; }

// ---------------------------------------------------------------- the emulator's state
namespace fastvae {
namespace emu {

// Settings of the emulated device; also set from Python (torch.ops.fastvae_emu._configure) and
// from the environment at load: FASTVAE_EMU_SMS, FASTVAE_EMU_MAX_GRID_Y, FASTVAE_EMU_REVERSE.
struct Options {
  int sm_count = 1;          // multiProcessorCount: launch heuristics scale with it
  int max_grid_y = 65535;    // maxGridSize[1] (and [2]); small values make grid-y loops cheap
  bool reverse = false;      // run threads (and blocks) in reverse order
  int generator_device = -1; // >= 0: generators report cuda:<index> (one of another GPU); -1: their own
};
Options& options();

// Every launch since the last call, as "grid.x,grid.y,grid.z block.x kernel @ mangled type of the
// launching lambda" (whose enclosing function's template arguments tell the launch path: tests
// check which path a shape took); then the log is cleared.
std::vector<std::string> take_launch_log();

namespace detail {

struct Site {
  const char* file;
  int line;
};

enum class WarpOpKind : uint8_t { kShfl, kShflUp, kShflDown, kShflXor, kSyncWarp, kBallot, kAny, kAll };

// The running thread's builtin variables; the scheduler sets them before resuming a fiber.
inline uint3 thread_idx{0, 0, 0};
inline uint3 block_idx{0, 0, 0};
inline dim3 block_dim{1, 1, 1};
inline dim3 grid_dim{1, 1, 1};

// Waits at a block barrier; returns the number of threads whose predicate was non-zero.
int block_barrier(int predicate, Site site);
// Waits at a warp op. `value` (size bytes) is this lane's operand; the result is written to `out`.
void warp_op(WarpOpKind kind, unsigned mask, const void* value, void* out, std::size_t size, int param, int width,
             Site site);
void* dynamic_shared();

// One launch: the grid, the kernel (as a function of no arguments run by every thread) and its name.
struct LaunchConfig {
  dim3 grid, block;
  std::size_t smem;
  const char* name;
  const char* where;  // the mangled type of the launching lambda: names the enclosing function
};
void run_grid(const LaunchConfig& cfg, void (*thread_body)(void*), void* arg);

// A grid or block argument: an integer (range-checked like CUDA's launch) or a dim3.
struct Dims {
  dim3 d;
  long long bad = -1;  // an integer that does not fit a dimension
  Dims(dim3 v) : d(v) {}
  template <typename I, typename = std::enable_if_t<std::is_integral_v<I>>>
  Dims(I v) : d(static_cast<unsigned>(v)) {
    if (v < 0 || static_cast<unsigned long long>(v) > 0x7fffffffull) bad = static_cast<long long>(v);
  }
};

}  // namespace detail

// What FASTVAE_LAUNCH(grid, block, smem, stream, kernel)(args...) makes in the emulation build.
template <typename Body>
class Launch {
 public:
  template <typename Stream>
  Launch(detail::Dims grid, detail::Dims block, std::size_t smem, Stream, const char* name, Body body)
      : cfg_{grid.d, block.d, smem, name, typeid(Body).name()}, body_(body) {
    TORCH_CHECK(grid.bad < 0 && block.bad < 0, "fastvae emu: invalid launch configuration of ", name,
                " (grid or block size ", grid.bad >= 0 ? grid.bad : block.bad, ")");
  }

  // CUDA copies the arguments once; every thread then reads its own copy of the parameters.
  template <typename... Args>
  void operator()(Args&&... args) const {
    std::tuple<std::decay_t<Args>...> params(std::forward<Args>(args)...);
    auto run = [&] { std::apply(body_, params); };
    detail::run_grid(cfg_, [](void* f) { (*static_cast<decltype(run)*>(f))(); }, &run);
  }

 private:
  detail::LaunchConfig cfg_;
  Body body_;
};

}  // namespace emu
}  // namespace fastvae

#define FASTVAE_EMU_LAUNCH(grid, block, smem, stream, ...) \
  ::fastvae::emu::Launch(grid, block, smem, stream, #__VA_ARGS__, [](auto&... fv_args) { __VA_ARGS__(fv_args...); })

// ---------------------------------------------------------------- builtin variables
#define threadIdx (::fastvae::emu::detail::thread_idx)
#define blockIdx (::fastvae::emu::detail::block_idx)
#define blockDim (::fastvae::emu::detail::block_dim)
#define gridDim (::fastvae::emu::detail::grid_dim)
constexpr int warpSize = 32;

// Dynamic shared memory: FASTVAE_DYNAMIC_SHARED(float, buf) declares `buf` in both builds.
#define FASTVAE_DYNAMIC_SHARED(T, name) T* const name = static_cast<T*>(::fastvae::emu::detail::dynamic_shared())

// ---------------------------------------------------------------- synchronisation
#define FASTVAE_EMU_SITE \
  const char *fv_file = __builtin_FILE(), int fv_line = __builtin_LINE()

inline void __syncthreads(FASTVAE_EMU_SITE) { ::fastvae::emu::detail::block_barrier(0, {fv_file, fv_line}); }
inline int __syncthreads_count(int p, FASTVAE_EMU_SITE) {
  return ::fastvae::emu::detail::block_barrier(p != 0, {fv_file, fv_line});
}
inline int __syncthreads_and(int p, FASTVAE_EMU_SITE) {
  return ::fastvae::emu::detail::block_barrier(p != 0, {fv_file, fv_line}) ==
         static_cast<int>(blockDim.x * blockDim.y * blockDim.z);  // exited threads count as false
}
inline int __syncthreads_or(int p, FASTVAE_EMU_SITE) {
  return ::fastvae::emu::detail::block_barrier(p != 0, {fv_file, fv_line}) > 0;
}

namespace fastvae {
namespace emu {
namespace detail {
template <typename T>
inline T shuffle(WarpOpKind kind, unsigned mask, T var, int param, int width, Site site) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffles move up to 16 trivial bytes");
  T out;
  warp_op(kind, mask, &var, &out, sizeof(T), param, width, site);
  return out;
}
}  // namespace detail
}  // namespace emu
}  // namespace fastvae

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, FASTVAE_EMU_SITE) {
  return ::fastvae::emu::detail::shuffle(::fastvae::emu::detail::WarpOpKind::kShfl, mask, var, src_lane, width,
                                         {fv_file, fv_line});
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, FASTVAE_EMU_SITE) {
  return ::fastvae::emu::detail::shuffle(::fastvae::emu::detail::WarpOpKind::kShflUp, mask, var,
                                         static_cast<int>(delta), width, {fv_file, fv_line});
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, FASTVAE_EMU_SITE) {
  return ::fastvae::emu::detail::shuffle(::fastvae::emu::detail::WarpOpKind::kShflDown, mask, var,
                                         static_cast<int>(delta), width, {fv_file, fv_line});
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, FASTVAE_EMU_SITE) {
  return ::fastvae::emu::detail::shuffle(::fastvae::emu::detail::WarpOpKind::kShflXor, mask, var, lane_mask, width,
                                         {fv_file, fv_line});
}
inline void __syncwarp(unsigned mask = 0xffffffffu, FASTVAE_EMU_SITE) {
  ::fastvae::emu::detail::shuffle(::fastvae::emu::detail::WarpOpKind::kSyncWarp, mask, 0, 0, warpSize,
                                  {fv_file, fv_line});
}
inline unsigned __ballot_sync(unsigned mask, int p, FASTVAE_EMU_SITE) {
  return ::fastvae::emu::detail::shuffle(::fastvae::emu::detail::WarpOpKind::kBallot, mask, p != 0 ? 1u : 0u, 0,
                                         warpSize, {fv_file, fv_line});
}
inline int __any_sync(unsigned mask, int p, FASTVAE_EMU_SITE) {
  return static_cast<int>(::fastvae::emu::detail::shuffle(::fastvae::emu::detail::WarpOpKind::kAny, mask,
                                                          p != 0 ? 1u : 0u, 0, warpSize, {fv_file, fv_line}));
}
inline int __all_sync(unsigned mask, int p, FASTVAE_EMU_SITE) {
  return static_cast<int>(::fastvae::emu::detail::shuffle(::fastvae::emu::detail::WarpOpKind::kAll, mask,
                                                          p != 0 ? 1u : 0u, 0, warpSize, {fv_file, fv_line}));
}
#undef FASTVAE_EMU_SITE

// Fibers switch only at the synchronisation points above, so a plain read-modify-write is atomic
// with respect to the other emulated threads; fences have nothing to order.
inline void __threadfence() {}
inline void __threadfence_block() {}
template <typename T>
inline T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }
template <typename T>
inline T atomicMax(T* p, T v) { const T old = *p; *p = old < v ? v : old; return old; }
template <typename T>
inline T atomicMin(T* p, T v) { const T old = *p; *p = v < old ? v : old; return old; }
template <typename T>
inline T atomicExch(T* p, T v) { const T old = *p; *p = v; return old; }
template <typename T>
inline T atomicCAS(T* p, T compare, T v) { const T old = *p; if (old == compare) *p = v; return old; }

// ---------------------------------------------------------------- loads and math intrinsics
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float __expf(float v) { return ::expf(v); }
inline float __logf(float v) { return ::logf(v); }
inline float __sinf(float v) { return ::sinf(v); }
inline float __cosf(float v) { return ::cosf(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float v) { return 1.0f / v; }
inline float __saturatef(float v) { return v < 0.f ? 0.f : (v > 1.f ? 1.f : v); }
inline float rsqrtf(float v) { return 1.0f / ::sqrtf(v); }
inline double rsqrt(double v) { return 1.0 / ::sqrt(v); }
inline void sincosf(float v, float* s, float* c) { *s = ::sinf(v); *c = ::cosf(v); }
inline void sincos(double v, double* s, double* c) { *s = ::sin(v); *c = ::cos(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
