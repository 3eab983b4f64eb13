// log q(z|x) and log p(z) per row and their backward passes, mirroring csrc/cpu/density.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/checks.h"
#include "cuda/gaussian_rows.cuh"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

template <typename scalar_t>
struct StandardNormalRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  const scalar_t* z;
  int64_t cols;

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(cols, z); }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    const auto zv = load_pack<V>(z + r * cols + j);
    acc_t s = 0;
#pragma unroll
    for (int v = 0; v < V; ++v) s += standard_normal_ll(static_cast<acc_t>(zv.v[v]));
    return s;
  }
};

// grad_z = -grad[r] * z.
template <typename scalar_t>
struct StandardNormalGrad {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  const acc_t* grad;
  const scalar_t* z;
  scalar_t* grad_z;
  int64_t cols;

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(cols, z, grad_z); }

  template <int V>
  __device__ void map(int64_t r, int64_t j) const {
    const auto zv = load_pack<V>(z + r * cols + j);
    const acc_t g = grad[r];
    Pack<scalar_t, V> out;
#pragma unroll
    for (int v = 0; v < V; ++v) out.v[v] = static_cast<scalar_t>(-g * static_cast<acc_t>(zv.v[v]));
    store_pack<V>(grad_z + r * cols + j, out);
  }
};

}  // namespace

at::Tensor gaussian_log_density(const at::Tensor& z, const at::Tensor& mu, const at::Tensor& logvar) {
  check_density(z, mu, logvar);
  const c10::cuda::CUDAGuard guard(z.device());
  auto acc_opts = z.options().dtype(acc_dtype(z.scalar_type()));
  auto out = at::empty({z.size(0)}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gaussian_density_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GaussianRows<scalar_t> rows{gaussian_operands<scalar_t>(z, mu, logvar)};
    row_sums<acc_t>(z.size(0), z.size(1), out.mutable_data_ptr<acc_t>(), acc_opts, rows);
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
      return gaussian_ll_grad_mean(static_cast<acc_t>(zp[r * cols + j]), static_cast<acc_t>(m[p]),
                                   inv_std(static_cast<acc_t>(lv[p])), -g[r]);
    };
    const auto operands = gaussian_operands<scalar_t>(z, mu, logvar);
    if (mu_rows == rows) {
      // No sample dim: all three gradients in one pass, nothing to sum.
      grad_mu = at::empty_like(mu);
      grad_logvar = at::empty_like(logvar);
      row_map(rows, cols,
              GaussianGrads<scalar_t>{operands, g, gz, grad_mu.mutable_data_ptr<scalar_t>(),
                                      grad_logvar.mutable_data_ptr<scalar_t>()});
      return;
    }
    row_map(rows, cols, GaussianGrads<scalar_t>{operands, g, gz, nullptr, nullptr});
    auto acc_opts = mu.options().dtype(acc_dtype(mu.scalar_type()));
    auto gmu = at::empty(mu.sizes(), acc_opts);
    auto glv = at::empty(mu.sizes(), acc_opts);
    repeat_sums<acc_t>(rows, mu_rows, cols, gmu.mutable_data_ptr<acc_t>(), acc_opts,
                       [=] __device__(int64_t r, int64_t j) { return -dz(r, j); });
    repeat_sums<acc_t>(rows, mu_rows, cols, glv.mutable_data_ptr<acc_t>(), acc_opts,
                       [=] __device__(int64_t r, int64_t j) {
                         const int64_t p = (r % mu_rows) * cols + j;
                         return gaussian_ll_grad_logvar(static_cast<acc_t>(zp[r * cols + j]), static_cast<acc_t>(m[p]),
                                                        inv_std(static_cast<acc_t>(lv[p])), g[r]);
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
    const StandardNormalRows<scalar_t> rows{z.const_data_ptr<scalar_t>(), z.size(1)};
    row_sums<acc_t>(z.size(0), z.size(1), out.mutable_data_ptr<acc_t>(), acc_opts, rows);
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
    row_map(z.size(0), z.size(1),
            StandardNormalGrad<scalar_t>{grad.const_data_ptr<acc_t>(), z.const_data_ptr<scalar_t>(),
                                         grad_z.mutable_data_ptr<scalar_t>(), z.size(1)});
  });
  return grad_z;
}

}  // namespace cuda
}  // namespace fastvae
