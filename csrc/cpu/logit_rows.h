// Rows of decoder logits against targets x, for the likelihoods whose forward pass also writes
// d ll / d logits (Bernoulli, continuous Bernoulli): ll[r] = sum_j term(l[r, j], x[r % x.rows, j]).
// x has the logits' dtype or is uint8 / bool (read as one byte per element). Math: a struct with
// kName (the dispatch name) and, for T = acc_t and Vec<acc_t>,
//   template <typename T> static T apply(T l, T x, T* dl)   (the term and its derivative).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "common/checks.h"
#include "cpu/outputs.h"
#include "cpu/row_reduce.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

template <typename scalar_t, typename x_t, typename Math>
void logit_rows_forward(const at::Tensor& logits, const at::Tensor& x, at::Tensor& ll, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = logits.size(0), cols = logits.size(1), x_rows = x.size(0);
  const scalar_t* l = logits.const_data_ptr<scalar_t>();
  const x_t* xp = x.const_data_ptr<x_t>();
  scalar_t* g = grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  const bool in_place = static_cast<const void*>(g) == static_cast<const void*>(l);
  constexpr int64_t kV = Vec<acc_t>::size();
  auto x_at = [&](int64_t r, int64_t j) { return xp + (r % x_rows) * cols + j; };
  // The gradient is written in the same pass: backward scales it by the incoming gradient, or
  // hands it on untouched where that is 1.
  row_sums<acc_t>(
      rows, cols, ll.mutable_data_ptr<acc_t>(),
      [&](int64_t r, int64_t j) {
        Vec<acc_t> dl;
        const auto lv = load_widened<acc_t>(l + r * cols + j);
        const auto v = Math::apply(lv, load_widened<acc_t>(x_at(r, j)), &dl);
        // Written over the logits (in place), a row's tail vector, which row_sums places at the
        // row's end so that it overlaps the last full one, finds its first lanes already holding
        // gradients: those lanes (summed as zero by row_sums) are stored back as they are.
        if (in_place && j % kV != 0) dl = Vec<acc_t>::set(dl, lv, kV - j % kV);
        if (g) store_narrowed<acc_t>(g + r * cols + j, dl);
        return v;
      },
      [&](int64_t r, int64_t j) {
        acc_t dl;
        const acc_t v = Math::apply(static_cast<acc_t>(l[r * cols + j]), static_cast<acc_t>(*x_at(r, j)), &dl);
        if (g) g[r * cols + j] = static_cast<scalar_t>(dl);
        return v;
      });
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
  auto ll = at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
  at::Tensor grad = compute_grad ? large_output(at::empty_like(logits)) : at::Tensor();
  logit_rows_dispatch<Math>(logits, x, ll, grad);
  return {ll, compute_grad ? grad : at::empty({0}, logits.options())};
}

// ll per row, with d ll / d logits written over the logits themselves (contiguous rows): each
// vector is read before its gradient is stored there (the overlapping tail: see above).
template <typename Math>
at::Tensor logit_rows_log_likelihood_into(const at::Tensor& logits, const at::Tensor& x) {
  check_bernoulli(logits, x);
  auto ll = at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
  at::Tensor grad = logits;
  logit_rows_dispatch<Math>(logits, x, ll, grad);
  return ll;
}

}  // namespace cpu
}  // namespace fastvae
