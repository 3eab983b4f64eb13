// Reparameterised sampling on the GPU, mirroring csrc/cpu/sampling.cpp: eps comes from the
// Philox stream of csrc/common/philox.h, so the same (seed, offset) gives the CPU's eps.
// The sampling kernels unpack torch's at::PhiloxCudaState themselves (under CUDA graph capture
// it points at the generator's device-side seed and offset, so a replay advances them like
// torch's own random ops) and write the (seed, offset) they used to a 2-element device tensor
// for the backward pass: no separate launch for the state.
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
#include "cuda/draw.cuh"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

// The state of a call that has no element to draw: recorded all the same, as the CPU op returns it.
__global__ void record_state_kernel(at::PhiloxCudaState philox, int64_t* state_out) {
  unpack_state(philox, state_out, true);
}

// One thread per Philox group: the four consecutive flat indices i0 .. i0 + 3 of z, written as
// one pack (z is the op's own allocation: aligned, contiguous). mu and logvar are read at
// p = i % n: one 64-bit division per group, then a step with wrap-around; as one pack each when
// kPacked (n % 4 == 0 and both aligned: the four never wrap).
template <typename scalar_t, bool kPacked>
__global__ void reparameterize_kernel(const scalar_t* mu, const scalar_t* logvar, at::PhiloxCudaState philox,
                                      int64_t* state_out, int64_t n, int64_t total, scalar_t* z) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState st = unpack_state(philox, state_out, blockIdx.x == 0 && threadIdx.x == 0);
  const int64_t groups = (total + 3) / 4;
  for (int64_t group = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; group < groups;
       group += int64_t(gridDim.x) * blockDim.x) {
    acc_t eps[4];
    philox_normal4<acc_t>(st, static_cast<uint64_t>(group), eps);
    const int64_t i0 = group * 4;
    Pack<scalar_t, 4> out;
    if constexpr (kPacked) {
      const int64_t p = i0 % n;
      const auto m = load_pack<4>(mu + p);
      const auto lv = load_pack<4>(logvar + p);
#pragma unroll
      for (int v = 0; v < 4; ++v)
        out.v[v] = static_cast<scalar_t>(static_cast<acc_t>(m.v[v]) +
                                         std_dev(static_cast<acc_t>(lv.v[v])) * eps[v]);
    } else {
      int64_t p = i0 % n;
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        out.v[v] = static_cast<scalar_t>(static_cast<acc_t>(mu[p]) +
                                         std_dev(static_cast<acc_t>(logvar[p])) * eps[v]);
        p = p + 1 == n ? 0 : p + 1;
      }
    }
    if (i0 + 4 <= total) {
      store_pack<4>(z + i0, out);
    } else {
      for (int v = 0; v < total - i0; ++v) z[i0 + v] = out.v[v];
    }
  }
}

// z for every sample and the KL term of each row of (mu, logvar), reading mu and logvar once.
template <typename scalar_t>
struct SampleAndKlRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  const scalar_t* mu;
  const scalar_t* logvar;
  at::PhiloxCudaState philox;
  int64_t* state_out;
  scalar_t* z;
  int64_t cols, n, samples;

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(cols, mu, logvar, z); }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    const int64_t p = r * cols + j;
    const auto m = load_pack<V>(mu + p);
    const auto lv = load_pack<V>(logvar + p);
    acc_t mean[V], sd[V], kl = 0;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const acc_t l = static_cast<acc_t>(lv.v[v]);
      mean[v] = static_cast<acc_t>(m.v[v]);
      sd[v] = std_dev(l);
      kl += kl_std_normal(mean[v], l);
    }
    draw_samples<V>(unpack_state(philox, state_out, p == 0), mean, sd, z, n, samples, p);
    return kl;
  }
};

// Gradients of mu and logvar, a pack of V elements of mu at a time (p = flat index): eps drawn
// again for each sample (one Philox group serves 4 elements when packed) and summed in sample
// order (blocks of kSampleBlock samples in acc_t, the block sums in double), then the KL term's
// gradient when reparameterize_with_kl's KL output was used (grad_kl, one entry per row of
// kl_cols elements).
template <typename scalar_t>
struct SampleGrads {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  const scalar_t* grad_z;
  const scalar_t* mu;
  const scalar_t* logvar;
  const int64_t* state;
  const acc_t* grad_kl;  // null: the KL output sent no gradient
  scalar_t* grad_mu;
  scalar_t* grad_logvar;
  int64_t n, samples, kl_cols;

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(n, grad_z, mu, logvar, grad_mu, grad_logvar); }

  template <int V>
  __device__ void map(int64_t, int64_t p) const {
    double wide_g[V], wide_g_eps[V];
    sample_grad_sums<V>(read_state(state), grad_z, n, samples, p, wide_g, wide_g_eps);
    const auto lv = load_pack<V>(logvar + p);
    Pack<scalar_t, V> m, gm, glv;
    if (grad_kl) m = load_pack<V>(mu + p);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const acc_t l = static_cast<acc_t>(lv.v[v]);
      // dz/dlogvar = eps * e^(logvar/2) / 2.
      acc_t dmu = static_cast<acc_t>(wide_g[v]), dlv = static_cast<acc_t>(wide_g_eps[v]) * acc_t(0.5) * std_dev(l);
      if (grad_kl) {
        const acc_t gk = grad_kl[(p + v) / kl_cols];
        dmu += gk * static_cast<acc_t>(m.v[v]);
        dlv += kl_std_normal_grad_logvar(l, gk);
      }
      gm.v[v] = static_cast<scalar_t>(dmu);
      glv.v[v] = static_cast<scalar_t>(dlv);
    }
    store_pack<V>(grad_mu + p, gm);
    store_pack<V>(grad_logvar + p, glv);
  }
};

}  // namespace

// The Philox state a forward sampling call draws from: a given rng_state (read by the kernel from
// device memory, as a captured state is) or the next offset of the generator. 4 offset units are
// one counter step of common/philox.h's (curand's) layout: the only step this call draws, which
// the generator then hands to no other op.
at::PhiloxCudaState sampling_philox(const at::Tensor& mu, std::optional<at::Generator> generator,
                                    const std::optional<at::Tensor>& rng_state) {
  if (rng_state.has_value() && rng_state->defined()) {
    auto* s = const_cast<int64_t*>(rng_state->const_data_ptr<int64_t>());
    return at::PhiloxCudaState(s, s + 1, 0);
  }
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(mu.device().index()));
  // A generator of another GPU: the kernel would read that device's seed and offset, and a CUDA
  // graph captured on mu's device would not register it, so replays would not advance it.
  // torch.Generator(device="cuda") has no device index (it serves the current device): only an
  // index that names another GPU is refused.
  const auto gen_device = gen->device();
  TORCH_CHECK(gen_device.type() == mu.device().type() &&
                  (!gen_device.has_index() || !mu.device().has_index() || gen_device.index() == mu.device().index()),
              "fastvae: the generator is on ", gen_device, " but mu is on ", mu.device(),
              "; pass a generator of mu's device");
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->philox_cuda_state(4);
}

void record_state(const at::PhiloxCudaState& philox, const at::Tensor& state) {
  FASTVAE_LAUNCH(1, 1, 0, at::cuda::getCurrentCUDAStream(), record_state_kernel)(philox,
                                                                                state.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TensorPair reparameterize(const at::Tensor& mu, const at::Tensor& logvar, int64_t num_samples,
                          std::optional<at::Generator> generator, const std::optional<at::Tensor>& rng_state) {
  check_sampling_call(mu, logvar, num_samples, rng_state);
  const c10::cuda::CUDAGuard guard(mu.device());
  std::vector<int64_t> shape{num_samples};
  shape.insert(shape.end(), mu.sizes().begin(), mu.sizes().end());
  auto z = at::empty(shape, mu.options());
  auto state = at::empty({2}, mu.options().dtype(at::kLong));
  const int64_t n = mu.numel(), total = n * num_samples;
  const auto philox = sampling_philox(mu, generator, rng_state);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (total == 0) {
    record_state(philox, state);
    return {z, state};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_cuda", [&] {
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    TORCH_INTERNAL_ASSERT(cuda_detail::packs_fit<4>(4, zp), "fastvae: z is not aligned for packs of 4");
    const int64_t blocks = grid_for((total + 3) / 4);
    int64_t* so = state.mutable_data_ptr<int64_t>();
    if (cuda_detail::packs_fit<4>(n, m, lv))
      FASTVAE_LAUNCH(blocks, kThreads, 0, stream, reparameterize_kernel<scalar_t, true>)(m, lv, philox, so, n, total, zp);
    else
      FASTVAE_LAUNCH(blocks, kThreads, 0, stream, reparameterize_kernel<scalar_t, false>)(m, lv, philox, so, n, total, zp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {z, state};
}

TensorTriple reparameterize_with_kl(const at::Tensor& mu, const at::Tensor& logvar, int64_t num_samples,
                                    std::optional<at::Generator> generator,
                                    const std::optional<at::Tensor>& rng_state) {
  check_matrix(mu, "mu");
  check_sampling_call(mu, logvar, num_samples, rng_state);
  const c10::cuda::CUDAGuard guard(mu.device());
  auto z = at::empty({num_samples, mu.size(0), mu.size(1)}, mu.options());
  auto state = at::empty({2}, mu.options().dtype(at::kLong));
  auto acc_opts = mu.options().dtype(acc_dtype(mu.scalar_type()));
  auto kl = at::empty({mu.size(0)}, acc_opts);
  const auto philox = sampling_philox(mu, generator, rng_state);
  if (mu.numel() == 0) {  // no element's thread records the state: one thread does
    record_state(philox, state);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_with_kl_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const SampleAndKlRows<scalar_t> rows{mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(),
                                         philox, state.mutable_data_ptr<int64_t>(), z.mutable_data_ptr<scalar_t>(),
                                         mu.size(1), mu.numel(), num_samples};
    row_sums<acc_t>(mu.size(0), mu.size(1), kl.mutable_data_ptr<acc_t>(), acc_opts, rows);
  });
  return {z, kl, state};
}

TensorPair reparameterize_backward(const at::Tensor& grad_z, const at::Tensor& mu, const at::Tensor& logvar,
                                   const at::Tensor& rng_state, const std::optional<at::Tensor>& grad_kl) {
  check_sampling_backward(grad_z, mu, logvar, rng_state, grad_kl);
  const int64_t n = mu.numel();
  const c10::cuda::CUDAGuard guard(mu.device());
  auto grad_mu = at::empty_like(mu);
  auto grad_logvar = at::empty_like(logvar);
  if (n == 0) return {grad_mu, grad_logvar};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* gkl = grad_kl.has_value() && grad_kl->defined() ? grad_kl->const_data_ptr<acc_t>() : nullptr;
    row_map(1, n,
            SampleGrads<scalar_t>{grad_z.const_data_ptr<scalar_t>(), mu.const_data_ptr<scalar_t>(),
                                  logvar.const_data_ptr<scalar_t>(), rng_state.const_data_ptr<int64_t>(), gkl,
                                  grad_mu.mutable_data_ptr<scalar_t>(), grad_logvar.mutable_data_ptr<scalar_t>(), n,
                                  grad_z_samples(grad_z, mu), mu.dim() == 2 ? mu.size(1) : 1});
  });
  return {grad_mu, grad_logvar};
}

}  // namespace cuda
}  // namespace fastvae
