// KL(N(mu, diag e^logvar) || N(0, I)) per row, and its backward (mirrors csrc/cpu/kl.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/checks.h"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

at::Tensor kl_standard_normal(const at::Tensor& mu, const at::Tensor& logvar) {
  check_matrix(mu, "mu");
  check_matrix(logvar, "logvar");
  check_same_shape(mu, "mu", logvar, "logvar");
  TORCH_CHECK(mu.scalar_type() == logvar.scalar_type(), "fastvae: mu and logvar must share a dtype");
  const c10::cuda::CUDAGuard guard(mu.device());
  auto acc_opts = mu.options().dtype(acc_dtype(mu.scalar_type()));
  auto kl = at::empty({mu.size(0)}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "kl_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = mu.size(1);
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    row_sums<acc_t>(mu.size(0), cols, kl.mutable_data_ptr<acc_t>(), acc_opts,
                    [=] __device__(int64_t r, int64_t j) {
                      const int64_t i = r * cols + j;
                      return kl_normal(static_cast<acc_t>(m[i]), static_cast<acc_t>(lv[i]));
                    });
  });
  return kl;
}

TensorPair kl_standard_normal_backward(const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& logvar) {
  check_matrix(mu, "mu");
  check_same_shape(mu, "mu", logvar, "logvar");
  check_row_grad(grad, mu, "mu");
  const c10::cuda::CUDAGuard guard(mu.device());
  auto grad_mu = at::empty_like(mu);
  auto grad_logvar = at::empty_like(logvar);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "kl_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = mu.size(1);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    scalar_t* gm = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* glv = grad_logvar.mutable_data_ptr<scalar_t>();
    row_map(mu.size(0), cols, [=] __device__(int64_t r, int64_t j) {
      const int64_t i = r * cols + j;
      gm[i] = static_cast<scalar_t>(g[r] * static_cast<acc_t>(m[i]));
      glv[i] = static_cast<scalar_t>(g[r] * acc_t(0.5) * (fv_exp(static_cast<acc_t>(lv[i])) - acc_t(1)));
    });
  });
  return {grad_mu, grad_logvar};
}

}  // namespace cuda
}  // namespace fastvae
