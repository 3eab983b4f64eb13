// Bernoulli and Gaussian log-likelihoods per row, mirroring csrc/cpu/likelihood.cpp; x may
// broadcast over the leading rows (row r reads x row r % x.rows).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/checks.h"
#include "cuda/gaussian_rows.cuh"
#include "cuda/launch.cuh"
#include "cuda/logit_rows.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

struct BernoulliMath {
  static constexpr const char* kName = "bernoulli_ll_cuda";
  template <typename T>
  __device__ static T apply(T l, T x, T* dl) { return bernoulli_ll_with_grad(l, x, dl); }
};

}  // namespace

// x - sigmoid(l) is written in the same pass, ready for backward (cuda/logit_rows.cuh).
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
  const c10::cuda::CUDAGuard guard(mean.device());
  auto acc_opts = mean.options().dtype(acc_dtype(mean.scalar_type()));
  auto ll = at::empty({mean.size(0)}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "gaussian_ll_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GaussianRows<scalar_t> rows{gaussian_operands<scalar_t>(mean, x, logvar)};
    row_sums<acc_t>(mean.size(0), mean.size(1), ll.mutable_data_ptr<acc_t>(), acc_opts, rows);
  });
  return ll;
}

TensorPair gaussian_log_likelihood_backward(const at::Tensor& grad, const at::Tensor& mean, const at::Tensor& x,
                                            const at::Tensor& logvar, bool logvar_grad) {
  check_gaussian(mean, x, logvar);
  check_row_grad(grad, mean, "mean");
  const c10::cuda::CUDAGuard guard(mean.device());
  auto grad_mean = at::empty_like(mean);
  at::Tensor grad_logvar;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "gaussian_ll_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t rows = mean.size(0), cols = mean.size(1), x_rows = x.size(0), lv_rows = logvar.size(0);
    const acc_t* gp = grad.const_data_ptr<acc_t>();
    const scalar_t* m = mean.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* lvp = logvar.const_data_ptr<scalar_t>();
    // A per-element variance (the decoder's) gets its gradient in the same pass as the mean; a
    // broadcast one is summed over the rows that read it, below.
    const bool fused_logvar = logvar_grad && lv_rows == rows;
    if (fused_logvar) grad_logvar = at::empty_like(logvar);
    row_map(rows, cols,
            GaussianGrads<scalar_t>{gaussian_operands<scalar_t>(mean, x, logvar), gp,
                                    grad_mean.mutable_data_ptr<scalar_t>(), nullptr,
                                    fused_logvar ? grad_logvar.mutable_data_ptr<scalar_t>() : nullptr});
    if (logvar_grad && !fused_logvar) {
      auto acc_opts = logvar.options().dtype(acc_dtype(logvar.scalar_type()));
      auto acc = at::empty(logvar.sizes(), acc_opts);
      repeat_sums<acc_t>(rows, lv_rows, cols, acc.mutable_data_ptr<acc_t>(), acc_opts,
                         [=] __device__(int64_t r, int64_t j) {
                           const acc_t h = inv_std(static_cast<acc_t>(lvp[(r % lv_rows) * cols + j]));
                           return gaussian_ll_grad_logvar(static_cast<acc_t>(xp[(r % x_rows) * cols + j]),
                                                          static_cast<acc_t>(m[r * cols + j]), h, gp[r]);
                         });
      grad_logvar = acc.to(logvar.scalar_type());
    }
  });
  return {grad_mean, logvar_grad ? grad_logvar : at::empty({0}, logvar.options())};
}

}  // namespace cuda
}  // namespace fastvae
