// Rows of decoder logits against targets x, for the likelihoods whose forward pass also writes
// d ll / d logits (Bernoulli, continuous Bernoulli); mirrors csrc/cpu/logit_rows.h. x has the
// logits' dtype or is uint8 / bool, and broadcasts over the leading rows (row r reads x row
// r % x.rows). Math: a struct with kName (the dispatch name) and
//   template <typename T> __device__ static T apply(T l, T x, T* dl)   (the term, its derivative).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/checks.h"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda_detail {

// The Bernoulli kind of rows (Math: the Bernoulli or the continuous Bernoulli term).
template <typename scalar_t, typename x_t, typename Math>
struct BernoulliRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  const scalar_t* logits;
  const x_t* x;
  scalar_t* grad;  // null: no gradient asked for
  int64_t cols, x_rows;

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(cols, logits, x, grad); }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    const auto l = load_pack<V>(logits + r * cols + j);
    const auto xv = load_pack<V>(x + (r % x_rows) * cols + j);
    Pack<scalar_t, V> g;
    acc_t s = 0;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      acc_t dl;
      s += Math::apply(static_cast<acc_t>(l.v[v]), static_cast<acc_t>(xv.v[v]), &dl);
      g.v[v] = static_cast<scalar_t>(dl);
    }
    if (grad) store_pack<V>(grad + r * cols + j, g);
    return s;
  }
};

template <typename scalar_t, typename x_t, typename Math>
void logit_rows_forward(const at::Tensor& logits, const at::Tensor& x, at::Tensor& ll, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const BernoulliRows<scalar_t, x_t, Math> rows{logits.const_data_ptr<scalar_t>(), x.const_data_ptr<x_t>(),
                                            grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr,
                                            logits.size(1), x.size(0)};
  row_sums<acc_t>(logits.size(0), logits.size(1), ll.mutable_data_ptr<acc_t>(), ll.options(), rows);
}

// logit_rows_forward for the logits' dtype and x's (that dtype, uint8 or bool).
template <typename Math>
void logit_rows_dispatch(const at::Tensor& logits, const at::Tensor& x, at::Tensor& ll, at::Tensor& grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), Math::kName, [&] {
    switch (x.scalar_type()) {
      case at::kByte: logit_rows_forward<scalar_t, uint8_t, Math>(logits, x, ll, grad); break;
      case at::kBool: logit_rows_forward<scalar_t, bool, Math>(logits, x, ll, grad); break;
      default: logit_rows_forward<scalar_t, scalar_t, Math>(logits, x, ll, grad);
    }
  });
}

// (ll per row, d ll / d logits or an empty tensor).
template <typename Math>
TensorPair logit_rows_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  check_bernoulli(logits, x);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto ll = at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
  at::Tensor grad = compute_grad ? at::empty_like(logits) : at::Tensor();
  logit_rows_dispatch<Math>(logits, x, ll, grad);
  return {ll, compute_grad ? grad : at::empty({0}, logits.options())};
}

// ll per row, with d ll / d logits written over the logits themselves (contiguous rows): each
// thread reads its pack before it stores the gradient there, so the two may alias.
template <typename Math>
at::Tensor logit_rows_log_likelihood_into(const at::Tensor& logits, const at::Tensor& x) {
  check_bernoulli(logits, x);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto ll = at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
  at::Tensor grad = logits;
  logit_rows_dispatch<Math>(logits, x, ll, grad);
  return ll;
}

}  // namespace cuda_detail
}  // namespace fastvae
