// Gaussian terms over the rows of `a`, read a pack at a time: `b` and `logvar` broadcast over
// a's rows (row r reads their row r % b_rows, r % lv_rows). The likelihood uses (a, b) =
// (mean, x), the posterior density (z, mu).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "cuda/launch.cuh"

namespace fastvae {
namespace cuda_detail {

template <typename scalar_t>
struct GaussianOperands {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  const scalar_t* a;
  const scalar_t* b;
  const scalar_t* logvar;
  int64_t cols, b_rows, lv_rows;

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(cols, a, b, logvar); }

  // Calls f(v, a, b, logvar, e^(-logvar/2)) for each element v of the pack at (r, j), in acc_t.
  template <int V, typename F>
  __device__ __forceinline__ void for_pack(int64_t r, int64_t j, F&& f) const {
    const auto av = load_pack<V>(a + r * cols + j);
    const auto bv = load_pack<V>(b + (r % b_rows) * cols + j);
    const auto lv = load_pack<V>(logvar + (r % lv_rows) * cols + j);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const acc_t l = static_cast<acc_t>(lv.v[v]);
      f(v, static_cast<acc_t>(av.v[v]), static_cast<acc_t>(bv.v[v]), l, inv_std(l));
    }
  }
};

// log N(a | b, e^logvar) per row, which is also log N(b | a, e^logvar): the likelihood of x
// given the decoder mean and the posterior density of z given mu are both this sum.
template <typename scalar_t>
struct GaussianRows : GaussianOperands<scalar_t> {
  using acc_t = at::opmath_type<scalar_t>;

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    acc_t s = 0;
    this->template for_pack<V>(r, j, [&](int, acc_t a, acc_t b, acc_t lv, acc_t h) { s += gaussian_ll(b, a, lv, h); });
    return s;
  }
};

// The gradients of grad[r] * log N(a | b, e^logvar), one pass: grad_a = grad[r] * (b - a) / var,
// and, where b and logvar have a row per row of a (nothing to sum over repeated rows), also
// grad_b = -grad_a and grad_logvar = grad[r] * ((b - a)^2 / var - 1) / 2. Null: not asked for.
template <typename scalar_t>
struct GaussianGrads : GaussianOperands<scalar_t> {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* grad;
  scalar_t* grad_a;
  scalar_t* grad_b;
  scalar_t* grad_logvar;

  bool packs_fit() const {
    return GaussianOperands<scalar_t>::packs_fit() &&
           cuda_detail::packs_fit<GaussianOperands<scalar_t>::kPack>(this->cols, grad_a, grad_b, grad_logvar);
  }

  template <int V>
  __device__ void map(int64_t r, int64_t j) const {
    Pack<scalar_t, V> ga, gb, glv;
    const acc_t g = grad[r];
    this->template for_pack<V>(r, j, [&](int v, acc_t a, acc_t b, acc_t, acc_t h) {
      const acc_t d = gaussian_ll_grad_mean(b, a, h, g);
      ga.v[v] = static_cast<scalar_t>(d);
      gb.v[v] = static_cast<scalar_t>(-d);
      glv.v[v] = static_cast<scalar_t>(gaussian_ll_grad_logvar(b, a, h, g));
    });
    const int64_t i = r * this->cols + j;
    store_pack<V>(grad_a + i, ga);
    if (grad_b) store_pack<V>(grad_b + i, gb);
    if (grad_logvar) store_pack<V>(grad_logvar + i, glv);
  }
};

template <typename scalar_t>
GaussianOperands<scalar_t> gaussian_operands(const at::Tensor& a, const at::Tensor& b, const at::Tensor& logvar) {
  return {a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(),
          a.size(1), b.size(0), logvar.size(0)};
}

}  // namespace cuda_detail
}  // namespace fastvae
