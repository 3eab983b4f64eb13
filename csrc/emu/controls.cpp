// Python-facing controls of the SIMT emulator and a few kernels that check the emulator itself
// (tests/test_emu.py): torch.ops.fastvae_emu._configure and torch.ops.fastvae_emu._selftest.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "emu/host.h"

namespace fastvae {
namespace emu {
namespace {

// Sets what is given (-1: leave as is); returns the previous [sm_count, max_grid_y, reverse].
std::vector<int64_t> configure(int64_t sm_count, int64_t max_grid_y, int64_t reverse) {
  Options& o = options();
  std::vector<int64_t> old{o.sm_count, o.max_grid_y, o.reverse ? 1 : 0};
  TORCH_CHECK(sm_count == -1 || sm_count >= 1, "fastvae emu: sm_count must be >= 1, got ", sm_count);
  TORCH_CHECK(max_grid_y == -1 || (max_grid_y >= 1 && max_grid_y <= 65535),
              "fastvae emu: max_grid_y must be in [1, 65535], got ", max_grid_y);
  if (sm_count != -1) o.sm_count = static_cast<int>(sm_count);
  if (max_grid_y != -1) o.max_grid_y = static_cast<int>(max_grid_y);
  if (reverse != -1) o.reverse = reverse != 0;
  return old;
}

// Makes every generator report cuda:<index> (-1: its own device again); returns the previous index.
int64_t generator_device(int64_t index) {
  TORCH_CHECK(index >= -1 && index < 64, "fastvae emu: generator device index must be in [-1, 64), got ", index);
  const int64_t old = options().generator_device;
  options().generator_device = static_cast<int>(index);
  return old;
}

// out[k * n + t] = result k of thread t: __shfl, __shfl_up, __shfl_down, __shfl_xor of each
// thread's value, with the given width; then how many lanes of its warp have a positive value.
__global__ void shuffles_kernel(const float* in, int width, float* out) {
  const int t = threadIdx.x, n = blockDim.x;
  const float v = in[t];
  out[t] = __shfl_sync(0xffffffffu, v, 3, width);
  out[n + t] = __shfl_up_sync(0xffffffffu, v, 2, width);
  out[2 * n + t] = __shfl_down_sync(0xffffffffu, v, 3, width);
  out[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, 5, width);
  out[4 * n + t] = static_cast<float>(__popc(__ballot_sync(0xffffffffu, v > 0)));
}

// A shuffle naming lanes that returned.
__global__ void exited_lane_kernel(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}

// Half a warp at a shuffle, the other half at a block barrier.
__global__ void shuffle_vs_barrier_kernel(float* out) {
  if (threadIdx.x % 32 < 16)
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
  else
    __syncthreads();
}

// Two barriers that never meet.
__global__ void split_barrier_kernel(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Each thread writes its slot and reads its neighbour's, with or without the barrier between.
__global__ void neighbour_kernel(bool barrier, float* out) {
  __shared__ float slots[256];
  slots[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

// What dynamic shared memory holds before anything is written: the poison.
__global__ void dynamic_shared_kernel(float* out) {
  FASTVAE_DYNAMIC_SHARED(float, buf);
  out[threadIdx.x] = buf[threadIdx.x];
}

__global__ void vector_load_kernel(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x + v.y + v.z + v.w;
}

__global__ void nothing_kernel(float*) {}

at::Tensor selftest(const std::string& name, const at::Tensor& input) {
  TORCH_CHECK(input.is_cpu() && input.scalar_type() == at::kFloat && input.is_contiguous(),
              "fastvae emu: _selftest takes a contiguous float32 CPU tensor");
  const float* in = input.const_data_ptr<float>();
  const int n = static_cast<int>(input.numel());
  if (name.rfind("shuffles_w", 0) == 0) {
    auto out = at::empty({5, n}, input.options());
    FASTVAE_EMU_LAUNCH(1, n, 0, 0, shuffles_kernel)(in, std::stoi(name.substr(10)), out.mutable_data_ptr<float>());
    return out;
  }
  auto out = at::zeros({std::max(n, 1)}, input.options());
  float* o = out.mutable_data_ptr<float>();
  if (name == "exited_lane") FASTVAE_EMU_LAUNCH(1, n, 0, 0, exited_lane_kernel)(o);
  else if (name == "shuffle_vs_barrier") FASTVAE_EMU_LAUNCH(1, n, 0, 0, shuffle_vs_barrier_kernel)(o);
  else if (name == "split_barrier") FASTVAE_EMU_LAUNCH(1, n, 0, 0, split_barrier_kernel)(o);
  else if (name == "neighbour" || name == "neighbour_racy") {
    TORCH_CHECK(n % 64 == 0, "two blocks of at most 256 threads");
    FASTVAE_EMU_LAUNCH(2, n / 2, 0, 0, neighbour_kernel)(name == "neighbour", o);
  } else if (name == "dynamic_shared") FASTVAE_EMU_LAUNCH(1, n, n * sizeof(float), 0, dynamic_shared_kernel)(o);
  else if (name == "vector_load") FASTVAE_EMU_LAUNCH(1, 1, 0, 0, vector_load_kernel)(in, o);
  else if (name == "grid_y_limit") FASTVAE_EMU_LAUNCH(dim3(1, n), 32, 0, 0, nothing_kernel)(o);
  else if (name == "too_many_threads") FASTVAE_EMU_LAUNCH(1, n, 0, 0, nothing_kernel)(o);
  else TORCH_CHECK(false, "fastvae emu: no self-test named ", name);
  return out;
}

}  // namespace
}  // namespace emu
}  // namespace fastvae

TORCH_LIBRARY_FRAGMENT(fastvae_emu, m) {
  m.def("_configure(int sm_count=-1, int max_grid_y=-1, int reverse=-1) -> int[]", &fastvae::emu::configure);
  m.def("_selftest(str name, Tensor input) -> Tensor", &fastvae::emu::selftest);
  m.def("_generator_device(int index) -> int", &fastvae::emu::generator_device);
  m.def("_launch_log() -> str[]", [] { return fastvae::emu::take_launch_log(); });
}
