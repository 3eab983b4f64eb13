// Host-side stand-ins for the CUDA runtime and torch's CUDA helpers that csrc/cuda/*.cu use, for
// the emulation build. The headers under csrc/emu/include/ shadow torch's own CUDA headers of the
// same names (that include directory comes first), so the kernel sources compile unchanged.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <tuple>

#include "emu/simt.h"

// ---------------------------------------------------------------- runtime API
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

// The fields of cudaDeviceProp that launch heuristics read, from fastvae::emu::options().
struct cudaDeviceProp {
  int multiProcessorCount;
  int maxGridSize[3];
  int maxThreadsPerBlock;
  int warpSize;
  std::size_t sharedMemPerBlock;
};

inline cudaError_t cudaMemsetAsync(void* p, int value, std::size_t bytes, cudaStream_t = nullptr) {
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "invalid value"; }

namespace fastvae {
namespace emu {

struct Stream {
  operator cudaStream_t() const { return nullptr; }
};
inline Stream current_stream() { return {}; }

inline cudaDeviceProp* device_properties() {
  thread_local cudaDeviceProp prop;
  const Options& o = options();
  prop.multiProcessorCount = o.sm_count;
  prop.maxGridSize[0] = 0x7fffffff;
  prop.maxGridSize[1] = prop.maxGridSize[2] = o.max_grid_y;
  prop.maxThreadsPerBlock = 1024;
  prop.warpSize = 32;
  prop.sharedMemPerBlock = 48 * 1024;
  return &prop;
}

// The emulated kernels take CPU tensors: the guard only checks that.
struct DeviceGuard {
  explicit DeviceGuard(c10::Device d) {
    TORCH_CHECK(d.is_cpu(), "fastvae emu: the emulated CUDA kernels take CPU tensors, got one on ", d);
  }
};

// (seed, offset) as at::PhiloxCudaState holds them (never graph-captured here).
struct PhiloxState {
  uint64_t seed_ = 0;
  uint64_t offset_ = 0;
  PhiloxState() = default;
  PhiloxState(uint64_t seed, uint64_t offset) : seed_(seed), offset_(offset) {}
  // torch's captured form: (seed, offset) read from memory at launch (here a CPU rng_state tensor).
  PhiloxState(int64_t* seed, int64_t* offset, uint64_t intra)
      : seed_(static_cast<uint64_t>(*seed)), offset_(static_cast<uint64_t>(*offset) + intra) {}
};
inline std::tuple<uint64_t, uint64_t> unpack(PhiloxState s) { return {s.seed_, s.offset_}; }

// Stands in for at::CUDAGeneratorImpl on top of a CPU generator: each philox_cuda_state call
// draws the seed as the next 64 random bits and starts at offset 0, exactly as fastvae's CPU
// philox_state does, so a CPU generator in one state gives the CPU and emulated ops one stream.
struct Generator {
  at::CPUGeneratorImpl* cpu;
  std::mutex& mutex_;
  PhiloxState philox_cuda_state(uint64_t /*increment*/) { return {cpu->random64(), 0}; }
  // The CPU generator's device, which is the emulated tensors' (cpu), unless a test makes it
  // stand for a generator of another GPU (torch.ops.fastvae_emu._generator_device).
  c10::Device device() const {
    const int index = options().generator_device;
    return index < 0 ? cpu->device() : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
};

inline const at::Generator& default_generator() { return at::detail::getDefaultCPUGenerator(); }

}  // namespace emu
}  // namespace fastvae

// ---------------------------------------------------------------- torch's names for them
namespace at {
using CUDAGeneratorImpl = ::fastvae::emu::Generator;
using PhiloxCudaState = ::fastvae::emu::PhiloxState;

// get_generator_or_default<CUDAGeneratorImpl> picks a CPU generator and wraps it.
template <>
inline ::fastvae::emu::Generator* get_generator_or_default<::fastvae::emu::Generator>(
    const std::optional<Generator>& gen, const Generator& default_gen) {
  auto* cpu = get_generator_or_default<CPUGeneratorImpl>(gen, default_gen);
  thread_local std::optional<::fastvae::emu::Generator> wrapper;
  wrapper.emplace(::fastvae::emu::Generator{cpu, cpu->mutex_});
  return &*wrapper;
}

namespace cuda {
inline ::fastvae::emu::Stream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
inline cudaDeviceProp* getCurrentDeviceProperties() { return ::fastvae::emu::device_properties(); }
namespace detail {
inline const Generator& getDefaultCUDAGenerator(c10::DeviceIndex = -1) { return ::fastvae::emu::default_generator(); }
}  // namespace detail
namespace philox {
using ::fastvae::emu::unpack;
}  // namespace philox
}  // namespace cuda
}  // namespace at

namespace c10 {
namespace cuda {
using CUDAGuard = ::fastvae::emu::DeviceGuard;
}  // namespace cuda
}  // namespace c10

// Launch errors are thrown by the launch itself; what CUDA would report later (a fault inside a
// kernel) is thrown there too. Nothing is left for the check.
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define C10_CUDA_CHECK(expr)                                                                        \
  do {                                                                                             \
    const cudaError_t fv_err = (expr);                                                             \
    TORCH_CHECK(fv_err == cudaSuccess, "fastvae emu: CUDA call failed: ", cudaGetErrorString(fv_err)); \
  } while (0)
