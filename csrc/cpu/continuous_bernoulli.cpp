// The continuous Bernoulli log-likelihood of x in [0, 1] under decoder logits, one row per
// example, summed over columns (csrc/common/continuous_bernoulli.h), with d ll / d logits written
// in the same pass. Layout and broadcasting as the Bernoulli likelihood's (csrc/cpu/likelihood.cpp):
// x may broadcast over the leading rows of the logits (row r reads x row r % x.rows).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "cpu/vec_math.h"

namespace fastvae {
// The vector log the normaliser's closed form needs (vec_math.h has the others); declared before
// the math header so that its templates find it.
template <typename T>
inline Vec<T> fv_log(const Vec<T>& v) { return v.log(); }
}  // namespace fastvae

#include "common/checks.h"
#include "common/continuous_bernoulli.h"
#include "cpu/outputs.h"
#include "cpu/row_reduce.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

namespace {

template <typename scalar_t, typename x_t>
void cb_forward(const at::Tensor& logits, const at::Tensor& x, at::Tensor& ll, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cols = logits.size(1), x_rows = x.size(0);
  const scalar_t* l = logits.const_data_ptr<scalar_t>();
  const x_t* xp = x.const_data_ptr<x_t>();
  scalar_t* g = grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  auto x_at = [&](int64_t r, int64_t j) { return xp + (r % x_rows) * cols + j; };
  row_sums<acc_t>(
      logits.size(0), cols, ll.mutable_data_ptr<acc_t>(),
      [&](int64_t r, int64_t j) {
        Vec<acc_t> dl;
        const auto v = continuous_bernoulli_ll_with_grad(load_widened<acc_t>(l + r * cols + j),
                                                         load_widened<acc_t>(x_at(r, j)), &dl);
        if (g) store_narrowed<acc_t>(g + r * cols + j, dl);
        return v;
      },
      [&](int64_t r, int64_t j) {
        acc_t dl;
        const acc_t v = continuous_bernoulli_ll_with_grad(static_cast<acc_t>(l[r * cols + j]),
                                                          static_cast<acc_t>(*x_at(r, j)), &dl);
        if (g) g[r * cols + j] = static_cast<scalar_t>(dl);
        return v;
      });
}

}  // namespace

TensorPair continuous_bernoulli_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  check_bernoulli(logits, x);
  auto ll = at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
  at::Tensor grad = compute_grad ? large_output(at::empty_like(logits)) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "continuous_bernoulli_ll", [&] {
    switch (x.scalar_type()) {
      case at::kByte: cb_forward<scalar_t, uint8_t>(logits, x, ll, grad); break;
      case at::kBool: cb_forward<scalar_t, bool>(logits, x, ll, grad); break;
      default: cb_forward<scalar_t, scalar_t>(logits, x, ll, grad);
    }
  });
  return {ll, compute_grad ? grad : at::empty({0}, logits.options())};
}

}  // namespace cpu
}  // namespace fastvae
