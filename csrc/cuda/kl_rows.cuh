// KL(N(mu, diag e^logvar) || N(0, I)) over the rows of (mu, logvar), read a pack at a time, for
// launch.cuh's row_sums: the KL op's forward, and the whole-ELBO op's KL term, which writes the
// gradients (scale * mu, scale * (e^logvar - 1) / 2) in the same coalesced pass.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "cuda/launch.cuh"

namespace fastvae {
namespace cuda_detail {

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

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(cols, mu, logvar, grad_mu, grad_logvar); }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    const int64_t i = r * cols + j;
    const auto m = load_pack<V>(mu + i);
    const auto lv = load_pack<V>(logvar + i);
    acc_t s = 0;
    Pack<scalar_t, V> gm, glv;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const acc_t mv = static_cast<acc_t>(m.v[v]), l = static_cast<acc_t>(lv.v[v]);
      s += kl_normal(mv, l);
      if (grad_mu) {  // the same for every thread: no divergence
        gm.v[v] = static_cast<scalar_t>(scale * mv);
        glv.v[v] = static_cast<scalar_t>(kl_normal_grad_logvar(l, scale));
      }
    }
    if (grad_mu) {
      store_pack<V>(grad_mu + i, gm);
      store_pack<V>(grad_logvar + i, glv);
    }
    return s;
  }
};

}  // namespace cuda_detail
}  // namespace fastvae
