// Bernoulli and Gaussian log-likelihoods of the data, one row per example, summed over columns.
// x may broadcast over the leading rows of the decoder output (row r reads x row r % x.rows).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "common/checks.h"
#include "cpu/logit_rows.h"
#include "cpu/row_reduce.h"
#include "cpu/outputs.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

namespace {

struct BernoulliMath {
  static constexpr const char* kName = "bernoulli_ll";
  template <typename T>
  static T apply(T l, T x, T* dl) { return bernoulli_ll_with_grad(l, x, dl); }
};

}  // namespace

// x - sigmoid(l) is written in the same pass, ready for backward (cpu/logit_rows.h).
TensorPair bernoulli_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  return logit_rows_log_likelihood<BernoulliMath>(logits, x, compute_grad);
}

// The same, d ll / d logits written over the logits (fastvae::linear_bernoulli_log_likelihood's
// own buffer, which nothing else reads).
at::Tensor bernoulli_log_likelihood_(const at::Tensor& logits, const at::Tensor& x) {
  return logit_rows_log_likelihood_into<BernoulliMath>(logits, x);
}

at::Tensor gaussian_log_likelihood(const at::Tensor& mean, const at::Tensor& x, const at::Tensor& logvar) {
  check_gaussian(mean, x, logvar);
  auto ll = at::empty({mean.size(0)}, mean.options().dtype(acc_dtype(mean.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "gaussian_ll", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = mean.size(1), x_rows = x.size(0), lv_rows = logvar.size(0);
    const scalar_t* m = mean.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* lvp = logvar.const_data_ptr<scalar_t>();
    row_sums<acc_t>(
        mean.size(0), cols, ll.mutable_data_ptr<acc_t>(),
        [&](int64_t r, int64_t j) {
          const auto lv = load_widened<acc_t>(lvp + (r % lv_rows) * cols + j);
          return gaussian_ll(load_widened<acc_t>(xp + (r % x_rows) * cols + j), load_widened<acc_t>(m + r * cols + j),
                             lv, inv_std(lv));
        },
        [&](int64_t r, int64_t j) {
          const acc_t lv = static_cast<acc_t>(lvp[(r % lv_rows) * cols + j]);
          return gaussian_ll(static_cast<acc_t>(xp[(r % x_rows) * cols + j]), static_cast<acc_t>(m[r * cols + j]),
                             lv, inv_std(lv));
        });
  });
  return ll;
}

TensorPair gaussian_log_likelihood_backward(const at::Tensor& grad, const at::Tensor& mean,
                                            const at::Tensor& x, const at::Tensor& logvar,
                                            bool logvar_grad) {
  check_gaussian(mean, x, logvar);
  check_row_grad(grad, mean, "mean");
  auto grad_mean = large_output(at::empty_like(mean));
  at::Tensor grad_logvar;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "gaussian_ll_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t rows = mean.size(0), cols = mean.size(1), x_rows = x.size(0);
    const int64_t lv_rows = logvar.size(0);
    const acc_t* gp = grad.const_data_ptr<acc_t>();
    const scalar_t* m = mean.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* lvp = logvar.const_data_ptr<scalar_t>();
    scalar_t* gm = grad_mean.mutable_data_ptr<scalar_t>();
    // A per-element variance (the decoder's) gets its gradient in the same vectorised pass as
    // the mean; a broadcast one is summed over the rows that read it, below.
    const bool fused_logvar = logvar_grad && lv_rows == rows;
    if (fused_logvar) grad_logvar = large_output(at::empty_like(logvar));
    scalar_t* glv = fused_logvar ? grad_logvar.mutable_data_ptr<scalar_t>() : nullptr;
    row_map<acc_t>(
        rows, cols,
        [&](int64_t r, int64_t j) {
          const Vec<acc_t> g(gp[r]);
          const auto xv = load_widened<acc_t>(xp + (r % x_rows) * cols + j);
          const auto mv = load_widened<acc_t>(m + r * cols + j);
          const auto h = inv_std(load_widened<acc_t>(lvp + (r % lv_rows) * cols + j));
          store_narrowed<acc_t>(gm + r * cols + j, gaussian_ll_grad_mean(xv, mv, h, g));
          if (glv) store_narrowed<acc_t>(glv + r * cols + j, gaussian_ll_grad_logvar(xv, mv, h, g));
        },
        [&](int64_t r, int64_t j) {
          const acc_t xv = static_cast<acc_t>(xp[(r % x_rows) * cols + j]);
          const acc_t mv = static_cast<acc_t>(m[r * cols + j]);
          const acc_t h = inv_std(static_cast<acc_t>(lvp[(r % lv_rows) * cols + j]));
          gm[r * cols + j] = static_cast<scalar_t>(gaussian_ll_grad_mean(xv, mv, h, gp[r]));
          if (glv) glv[r * cols + j] = static_cast<scalar_t>(gaussian_ll_grad_logvar(xv, mv, h, gp[r]));
        });
    if (logvar_grad && !fused_logvar) {
      // Summed over every row that read this logvar row (per-dim and scalar variances).
      auto acc = at::empty(logvar.sizes(), logvar.options().dtype(acc_dtype(logvar.scalar_type())));
      // Row r reads logvar row r % lv_rows = b: its inverse std once per (b, j).
      repeat_sums_cached<acc_t>(
          rows, lv_rows, cols, acc.mutable_data_ptr<acc_t>(),
          [&](int64_t b, int64_t j) { return inv_std(static_cast<acc_t>(lvp[b * cols + j])); },
          [&](int64_t r, int64_t j, acc_t h) {
            return gaussian_ll_grad_logvar(static_cast<acc_t>(xp[(r % x_rows) * cols + j]),
                                           static_cast<acc_t>(m[r * cols + j]), h, gp[r]);
          });
      grad_logvar = acc.to(logvar.scalar_type());
    }
  });
  return {grad_mean, logvar_grad ? grad_logvar : at::empty({0}, logvar.options())};
}

}  // namespace cpu
}  // namespace fastvae
