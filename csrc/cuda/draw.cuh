// The CUDA sampling kernels' draw, shared by csrc/cuda/sampling.cu and csrc/cuda/kl_normal.cu (the
// sample with its KL against a prior), so that both draw the same eps for the same state: the
// (seed, offset) of a call, eps a pack at a time, the per-sample gradient sums of the backward.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>

#include <optional>

#include "common/philox.h"
#include "cuda/launch.cuh"

namespace fastvae {
namespace cuda {

// The Philox state a forward sampling call draws from (csrc/cuda/sampling.cu): a given rng_state
// or the next offset of the generator.
at::PhiloxCudaState sampling_philox(const at::Tensor& mu, std::optional<at::Generator> generator,
                                    const std::optional<at::Tensor>& rng_state);
// Writes the call's (seed, offset) to state with one thread: for a call with no element to draw.
void record_state(const at::PhiloxCudaState& philox, const at::Tensor& state);

}  // namespace cuda

namespace cuda_detail {

__device__ __forceinline__ PhiloxState read_state(const int64_t* s) {
  return {static_cast<uint64_t>(s[0]), static_cast<uint64_t>(s[1])};
}

// The stream of a forward sampling call; the one thread that draws flat index 0 records it.
__device__ __forceinline__ PhiloxState unpack_state(const at::PhiloxCudaState& philox, int64_t* state_out,
                                                    bool record) {
  const auto seeds = at::cuda::philox::unpack(philox);
  if (record) {
    state_out[0] = static_cast<int64_t>(std::get<0>(seeds));
    state_out[1] = static_cast<int64_t>(std::get<1>(seeds));
  }
  return {std::get<0>(seeds), std::get<1>(seeds)};
}

// eps of the V consecutive flat indices i0 .. i0 + V - 1, i0 a multiple of V: whole Philox
// groups for V >= 4, part of one group otherwise.
template <int V, typename acc_t>
__device__ __forceinline__ void eps_pack(PhiloxState st, int64_t i0, acc_t eps[V]) {
  if constexpr (V >= 4) {
#pragma unroll
    for (int q = 0; q < V / 4; ++q) philox_normal4<acc_t>(st, static_cast<uint64_t>(i0 / 4 + q), eps + 4 * q);
  } else {
    acc_t group[4];
    philox_normal4<acc_t>(st, static_cast<uint64_t>(i0 / 4), group);
#pragma unroll
    for (int v = 0; v < V; ++v) eps[v] = group[i0 % 4 + v];
  }
}

// z = mean + sd * eps at the V elements of flat index p, for each of the samples (sample k at
// z + k * n + p): what fastvae::reparameterize draws there.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void draw_samples(PhiloxState st, const acc_t mean[V], const acc_t sd[V], scalar_t* z,
                                             int64_t n, int64_t samples, int64_t p) {
  for (int64_t k = 0; k < samples; ++k) {
    acc_t eps[V];
    eps_pack<V>(st, k * n + p, eps);
    Pack<scalar_t, V> out;
#pragma unroll
    for (int v = 0; v < V; ++v) out.v[v] = static_cast<scalar_t>(mean[v] + sd[v] * eps[v]);
    store_pack<V>(z + k * n + p, out);
  }
}

// The sums over samples of grad_z and grad_z * eps for the V elements of mu at flat index p
// (n = mu.numel(), sample k's gradient at grad_z + k * n + p): eps drawn again, summed in sample
// order in blocks of kSampleBlock samples in acc_t, the block sums in double.
template <int V, typename scalar_t>
__device__ __forceinline__ void sample_grad_sums(PhiloxState st, const scalar_t* grad_z, int64_t n, int64_t samples,
                                                 int64_t p, double wide_g[V], double wide_g_eps[V]) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t sum_g[V] = {}, sum_g_eps[V] = {};
#pragma unroll
  for (int v = 0; v < V; ++v) wide_g[v] = wide_g_eps[v] = 0;
  for (int64_t k = 0; k < samples; ++k) {
    acc_t eps[V];
    eps_pack<V>(st, k * n + p, eps);
    const auto g = load_pack<V>(grad_z + k * n + p);
    const bool flush = (k + 1) % kSampleBlock == 0 || k + 1 == samples;  // the same for every thread
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const acc_t gv = static_cast<acc_t>(g.v[v]);
      sum_g[v] += gv;
      sum_g_eps[v] += gv * eps[v];
      if (flush) {
        wide_g[v] += static_cast<double>(sum_g[v]);
        wide_g_eps[v] += static_cast<double>(sum_g_eps[v]);
        sum_g[v] = sum_g_eps[v] = 0;
      }
    }
  }
}

}  // namespace cuda_detail
}  // namespace fastvae
