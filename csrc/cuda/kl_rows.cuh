// KL(N(mu, diag e^logvar) || N(0, I)) over the rows of (mu, logvar), read a pack at a time, for
// launch.cuh's row_sums: the KL op's forward, and the whole-ELBO op's KL term, which writes the
// gradients (scale * mu, scale * (e^logvar - 1) / 2) in the same coalesced pass.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "cuda/launch.cuh"

namespace fastvae {
namespace cuda_detail {

// The KL's gradients times g for the pack (m, lv) at flat index i: g * mu to grad_mu,
// g * (e^logvar - 1) / 2 to grad_logvar, one vector store each.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_kl_grads(const Pack<scalar_t, V>& m, const Pack<scalar_t, V>& lv, acc_t g,
                                               scalar_t* grad_mu, scalar_t* grad_logvar, int64_t i) {
  Pack<scalar_t, V> gm, glv;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    gm.v[v] = static_cast<scalar_t>(g * static_cast<acc_t>(m.v[v]));
    glv.v[v] = static_cast<scalar_t>(kl_std_normal_grad_logvar(static_cast<acc_t>(lv.v[v]), g));
  }
  store_pack<V>(grad_mu + i, gm);
  store_pack<V>(grad_logvar + i, glv);
}

template <typename scalar_t>
struct KlRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  const scalar_t* mu;
  const scalar_t* logvar;
  int64_t cols;
  scalar_t* grad_mu = nullptr;  // null: no gradients (then grad_logvar is null too)
  scalar_t* grad_logvar = nullptr;
  acc_t scale = 1;
  acc_t sum_scale = 1;  // each term enters the row sum times it (the ELBO's mean: 1 / rows)

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(cols, mu, logvar, grad_mu, grad_logvar); }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    const int64_t i = r * cols + j;
    const auto m = load_pack<V>(mu + i);
    const auto lv = load_pack<V>(logvar + i);
    acc_t s = 0;
#pragma unroll
    for (int v = 0; v < V; ++v) s += kl_std_normal(static_cast<acc_t>(m.v[v]), static_cast<acc_t>(lv.v[v])) * sum_scale;
    if (grad_mu) store_kl_grads<V>(m, lv, scale, grad_mu, grad_logvar, i);  // the same for every thread
    return s;
  }
};

}  // namespace cuda_detail
}  // namespace fastvae
