// log q(z|x) and log p(z) per row and their backward passes, mirroring csrc/cpu/density.cpp.
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

at::Tensor gaussian_log_density(const at::Tensor& z, const at::Tensor& mu, const at::Tensor& logvar) {
  check_density(z, mu, logvar);
  const c10::cuda::CUDAGuard guard(z.device());
  auto acc_opts = z.options().dtype(acc_dtype(z.scalar_type()));
  auto out = at::empty({z.size(0)}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gaussian_density_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = z.size(1), mu_rows = mu.size(0);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    row_sums<acc_t>(z.size(0), cols, out.mutable_data_ptr<acc_t>(), acc_opts, [=] __device__(int64_t r, int64_t j) {
      const int64_t p = (r % mu_rows) * cols + j;
      const acc_t lvv = static_cast<acc_t>(lv[p]);
      return gaussian_ll(static_cast<acc_t>(zp[r * cols + j]), static_cast<acc_t>(m[p]), lvv, fv_exp(-lvv));
    });
  });
  return out;
}

TensorTriple gaussian_log_density_backward(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& mu,
                                           const at::Tensor& logvar) {
  check_density(z, mu, logvar);
  check_row_grad(grad, z, "z");
  const c10::cuda::CUDAGuard guard(z.device());
  auto grad_z = at::empty_like(z);
  at::Tensor grad_mu, grad_logvar;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gaussian_density_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t rows = z.size(0), cols = z.size(1), mu_rows = mu.size(0);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    scalar_t* gz = grad_z.mutable_data_ptr<scalar_t>();
    // d/dz = -(z - mu) / var; d/dmu is its negative, summed over the sample rows.
    auto dz = [=] __device__(int64_t r, int64_t j) {
      const int64_t p = (r % mu_rows) * cols + j;
      return -g[r] * gaussian_ll_grad_mean(static_cast<acc_t>(zp[r * cols + j]), static_cast<acc_t>(m[p]),
                                           fv_exp(-static_cast<acc_t>(lv[p])));
    };
    row_map(rows, cols, [=] __device__(int64_t r, int64_t j) { gz[r * cols + j] = static_cast<scalar_t>(dz(r, j)); });
    auto acc_opts = mu.options().dtype(acc_dtype(mu.scalar_type()));
    auto gmu = at::empty(mu.sizes(), acc_opts);
    auto glv = at::empty(mu.sizes(), acc_opts);
    repeat_sums<acc_t>(rows, mu_rows, cols, gmu.mutable_data_ptr<acc_t>(), acc_opts,
                       [=] __device__(int64_t r, int64_t j) { return -dz(r, j); });
    repeat_sums<acc_t>(rows, mu_rows, cols, glv.mutable_data_ptr<acc_t>(), acc_opts,
                       [=] __device__(int64_t r, int64_t j) {
                         const int64_t p = (r % mu_rows) * cols + j;
                         return g[r] * gaussian_ll_grad_logvar(static_cast<acc_t>(zp[r * cols + j]),
                                                               static_cast<acc_t>(m[p]), fv_exp(-static_cast<acc_t>(lv[p])));
                       });
    grad_mu = gmu.to(mu.scalar_type());
    grad_logvar = glv.to(logvar.scalar_type());
  });
  return {grad_z, grad_mu, grad_logvar};
}

at::Tensor standard_normal_log_density(const at::Tensor& z) {
  check_matrix(z, "z");
  const c10::cuda::CUDAGuard guard(z.device());
  auto acc_opts = z.options().dtype(acc_dtype(z.scalar_type()));
  auto out = at::empty({z.size(0)}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "std_normal_density_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = z.size(1);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    row_sums<acc_t>(z.size(0), cols, out.mutable_data_ptr<acc_t>(), acc_opts, [=] __device__(int64_t r, int64_t j) {
      return standard_normal_ll(static_cast<acc_t>(zp[r * cols + j]));
    });
  });
  return out;
}

at::Tensor standard_normal_log_density_backward(const at::Tensor& grad, const at::Tensor& z) {
  check_matrix(z, "z");
  check_row_grad(grad, z, "z");
  const c10::cuda::CUDAGuard guard(z.device());
  auto grad_z = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "std_normal_density_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = z.size(1);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t* gz = grad_z.mutable_data_ptr<scalar_t>();
    row_map(z.size(0), cols, [=] __device__(int64_t r, int64_t j) {
      gz[r * cols + j] = static_cast<scalar_t>(-g[r] * static_cast<acc_t>(zp[r * cols + j]));
    });
  });
  return grad_z;
}

}  // namespace cuda
}  // namespace fastvae
