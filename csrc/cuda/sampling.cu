// Reparameterised sampling on the GPU, mirroring csrc/cpu/sampling.cpp: eps comes from the
// Philox stream of csrc/common/philox.h, so the same (seed, offset) gives the CPU's eps.
// (seed, offset) live in a device tensor, filled from torch's CUDA generator by a kernel, so a
// CUDA graph replay advances them like torch's own random ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAGuard.h>

#include <mutex>
#include <vector>

#include "common/checks.h"
#include "common/philox.h"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

__global__ void write_state_kernel(at::PhiloxCudaState philox, int64_t* out) {
  const auto seeds = at::cuda::philox::unpack(philox);
  out[0] = static_cast<int64_t>(std::get<0>(seeds));
  out[1] = static_cast<int64_t>(std::get<1>(seeds));
}

__device__ __forceinline__ PhiloxState read_state(const int64_t* s) {
  return {static_cast<uint64_t>(s[0]), static_cast<uint64_t>(s[1])};
}

// One thread per Philox group: four consecutive flat indices.
template <typename scalar_t>
__global__ void reparameterize_kernel(const scalar_t* mu, const scalar_t* logvar, const int64_t* state,
                                      int64_t n, int64_t total, scalar_t* z) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState st = read_state(state);
  const int64_t groups = (total + 3) / 4;
  for (int64_t group = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; group < groups;
       group += int64_t(gridDim.x) * blockDim.x) {
    acc_t eps[4];
    philox_normal4<acc_t>(st, static_cast<uint64_t>(group), eps);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = group * 4 + lane;
      if (i < total) {
        const int64_t p = i % n;
        z[i] = static_cast<scalar_t>(static_cast<acc_t>(mu[p]) +
                                     fv_exp(acc_t(0.5) * static_cast<acc_t>(logvar[p])) * eps[lane]);
      }
    }
  }
}

// One thread per element of mu: draws its eps again for each sample, sums in sample order.
template <typename scalar_t>
__global__ void reparameterize_backward_kernel(const scalar_t* grad_z, const scalar_t* logvar, const int64_t* state,
                                               int64_t n, int64_t samples, scalar_t* grad_mu, scalar_t* grad_logvar) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState st = read_state(state);
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum_g = 0, sum_g_eps = 0;
    for (int64_t k = 0; k < samples; ++k) {
      const int64_t i = k * n + p;
      acc_t eps[4];
      philox_normal4<acc_t>(st, static_cast<uint64_t>(i / 4), eps);
      const acc_t g = static_cast<acc_t>(grad_z[i]);
      sum_g += g;
      sum_g_eps += g * eps[i % 4];
    }
    grad_mu[p] = static_cast<scalar_t>(sum_g);
    grad_logvar[p] = static_cast<scalar_t>(sum_g_eps * acc_t(0.5) * fv_exp(acc_t(0.5) * static_cast<acc_t>(logvar[p])));
  }
}

}  // namespace

at::Tensor philox_state(const at::Tensor& like, std::optional<at::Generator> generator) {
  const c10::cuda::CUDAGuard guard(like.device());
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(generator, at::cuda::detail::getDefaultCUDAGenerator());
  at::PhiloxCudaState philox;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    // Our counter puts the offset in its high words, so each call needs only a fresh offset.
    philox = gen->philox_cuda_state(4);
  }
  auto state = at::empty({2}, like.options().dtype(at::kLong));
  write_state_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(philox, state.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return state;
}

at::Tensor reparameterize(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& rng_state,
                          int64_t num_samples) {
  check_sampling_inputs(mu, logvar, rng_state);
  TORCH_CHECK(num_samples >= 1, "fastvae: num_samples must be >= 1, got ", num_samples);
  const c10::cuda::CUDAGuard guard(mu.device());
  std::vector<int64_t> shape{num_samples};
  shape.insert(shape.end(), mu.sizes().begin(), mu.sizes().end());
  auto z = at::empty(shape, mu.options());
  const int64_t n = mu.numel(), total = n * num_samples;
  if (total == 0) return z;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_cuda", [&] {
    reparameterize_kernel<scalar_t><<<grid_for((total + 3) / 4), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(), rng_state.const_data_ptr<int64_t>(), n,
        total, z.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return z;
}

TensorPair reparameterize_backward(const at::Tensor& grad_z, const at::Tensor& mu, const at::Tensor& logvar,
                                   const at::Tensor& rng_state) {
  check_sampling_inputs(mu, logvar, rng_state);
  const int64_t n = mu.numel();
  TORCH_CHECK(grad_z.dim() == mu.dim() + 1 && grad_z.numel() == grad_z.size(0) * n &&
                  grad_z.scalar_type() == mu.scalar_type() && grad_z.is_contiguous(),
              "fastvae: grad_z must be a contiguous (num_samples, *mu.shape) tensor of mu's dtype");
  check_same_device(grad_z, "grad_z", mu, "mu");
  const c10::cuda::CUDAGuard guard(mu.device());
  auto grad_mu = at::empty_like(mu);
  auto grad_logvar = at::empty_like(logvar);
  if (n == 0) return {grad_mu, grad_logvar};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_bwd_cuda", [&] {
    reparameterize_backward_kernel<scalar_t><<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_z.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(), rng_state.const_data_ptr<int64_t>(), n,
        grad_z.size(0), grad_mu.mutable_data_ptr<scalar_t>(), grad_logvar.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_mu, grad_logvar};
}

}  // namespace cuda
}  // namespace fastvae
