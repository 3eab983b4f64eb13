// KL(N(mu, diag e^logvar) || N(0, I)) per row, and its backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "common/checks.h"
#include "cpu/row_reduce.h"
#include "cpu/outputs.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

at::Tensor kl_standard_normal(const at::Tensor& mu, const at::Tensor& logvar) {
  check_kl_operands(mu, logvar);
  auto kl = at::empty({mu.size(0)}, mu.options().dtype(acc_dtype(mu.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "kl", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = mu.size(1);
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    row_sums<acc_t>(
        mu.size(0), cols, kl.mutable_data_ptr<acc_t>(),
        [&](int64_t r, int64_t j) {
          return kl_std_normal(load_widened<acc_t>(m + r * cols + j), load_widened<acc_t>(lv + r * cols + j));
        },
        [&](int64_t r, int64_t j) {
          return kl_std_normal(static_cast<acc_t>(m[r * cols + j]), static_cast<acc_t>(lv[r * cols + j]));
        });
  });
  return kl;
}

TensorPair kl_standard_normal_backward(const at::Tensor& grad, const at::Tensor& mu,
                                       const at::Tensor& logvar) {
  check_kl_operands(mu, logvar);  // the kernels index logvar as a contiguous matrix like mu
  check_row_grad(grad, mu, "mu");
  auto grad_mu = large_output(at::empty_like(mu));
  auto grad_logvar = large_output(at::empty_like(logvar));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "kl_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = mu.size(1);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    scalar_t* gm = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* glv = grad_logvar.mutable_data_ptr<scalar_t>();
    // d/dmu = mu, d/dlogvar = (e^logvar - 1) / 2, both times the row's incoming gradient.
    row_map<acc_t>(
        mu.size(0), cols,
        [&](int64_t r, int64_t j) {
          const Vec<acc_t> gr(g[r]);
          const int64_t i = r * cols + j;
          store_narrowed<acc_t>(gm + i, gr * load_widened<acc_t>(m + i));
          store_narrowed<acc_t>(glv + i, kl_std_normal_grad_logvar(load_widened<acc_t>(lv + i), gr));
        },
        [&](int64_t r, int64_t j) {
          const int64_t i = r * cols + j;
          gm[i] = static_cast<scalar_t>(g[r] * static_cast<acc_t>(m[i]));
          glv[i] = static_cast<scalar_t>(kl_std_normal_grad_logvar(static_cast<acc_t>(lv[i]), g[r]));
        });
  });
  return {grad_mu, grad_logvar};
}

}  // namespace cpu
}  // namespace fastvae
