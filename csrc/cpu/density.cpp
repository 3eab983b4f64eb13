// log q(z|x) = log N(z | mu, diag e^logvar) and log p(z) = log N(z | 0, I) per row, and their
// backward passes. z may carry a leading sample dim: its rows read mu/logvar row r % mu.rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "common/checks.h"
#include "cpu/row_reduce.h"
#include "cpu/outputs.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

at::Tensor gaussian_log_density(const at::Tensor& z, const at::Tensor& mu, const at::Tensor& logvar) {
  check_density(z, mu, logvar);
  auto out = at::empty({z.size(0)}, z.options().dtype(acc_dtype(z.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gaussian_density", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = z.size(1), mu_rows = mu.size(0);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    row_sums<acc_t>(
        z.size(0), cols, out.mutable_data_ptr<acc_t>(),
        [&](int64_t r, int64_t j) {
          const int64_t p = (r % mu_rows) * cols + j;
          const auto lvv = load_widened<acc_t>(lv + p);
          return gaussian_ll(load_widened<acc_t>(zp + r * cols + j), load_widened<acc_t>(m + p), lvv, inv_std(lvv));
        },
        [&](int64_t r, int64_t j) {
          const int64_t p = (r % mu_rows) * cols + j;
          const acc_t lvv = static_cast<acc_t>(lv[p]);
          return gaussian_ll(static_cast<acc_t>(zp[r * cols + j]), static_cast<acc_t>(m[p]), lvv, inv_std(lvv));
        });
  });
  return out;
}

namespace {

// mu's and logvar's gradients when z has K samples per row of mu: out[b, j] = the sum over
// k = 0 .. K-1 (in that order, in acc_t) of the derivative at row r = k * mu_rows + b, as
// repeat_sums adds them, but both sums in one walk over z and inv_std(logvar) taken once per
// (b, j) rather than once per sample, which leaves the inner loop free of exp.
template <typename acc_t, typename scalar_t>
void gaussian_param_sums(int64_t rows, int64_t mu_rows, int64_t cols, const acc_t* g, const scalar_t* zp,
                         const scalar_t* m, const scalar_t* lv, acc_t* gmu, acc_t* glv) {
  for_repeat_tiles(rows, mu_rows, cols, [&](int64_t b, int64_t j0, int64_t n, int64_t repeats) {
    acc_t mean[kRepeatBlock], h[kRepeatBlock], sum_mu[kRepeatBlock] = {}, sum_lv[kRepeatBlock] = {};
    const int64_t p0 = b * cols + j0;
    for (int64_t q = 0; q < n; ++q) {
      mean[q] = static_cast<acc_t>(m[p0 + q]);
      h[q] = inv_std(static_cast<acc_t>(lv[p0 + q]));
    }
    for (int64_t k = 0; k < repeats; ++k) {
      const int64_t r = k * mu_rows + b;
      const acc_t gr = g[r];
      const scalar_t* zr = zp + r * cols + j0;
      for (int64_t q = 0; q < n; ++q) {
        const acc_t zv = static_cast<acc_t>(zr[q]);
        sum_mu[q] += -gaussian_ll_grad_mean(zv, mean[q], h[q], -gr);
        sum_lv[q] += gaussian_ll_grad_logvar(zv, mean[q], h[q], gr);
      }
    }
    std::copy(sum_mu, sum_mu + n, gmu + p0);
    std::copy(sum_lv, sum_lv + n, glv + p0);
  });
}

}  // namespace

TensorTriple gaussian_log_density_backward(const at::Tensor& grad, const at::Tensor& z,
                                           const at::Tensor& mu, const at::Tensor& logvar) {
  check_density(z, mu, logvar);
  check_row_grad(grad, z, "z");
  auto grad_z = large_output(at::empty_like(z));
  at::Tensor grad_mu, grad_logvar;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gaussian_density_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t rows = z.size(0), cols = z.size(1), mu_rows = mu.size(0);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    scalar_t* gz = grad_z.mutable_data_ptr<scalar_t>();
    // d/dz = -(z - mu) / var; d/dmu is its negative, summed over the sample rows.
    auto dz = [&](int64_t r, int64_t j) {
      const int64_t p = (r % mu_rows) * cols + j;
      return gaussian_ll_grad_mean(static_cast<acc_t>(zp[r * cols + j]), static_cast<acc_t>(m[p]),
                                   inv_std(static_cast<acc_t>(lv[p])), -g[r]);
    };
    if (mu_rows == rows) {
      // No sample dim: all three gradients in one vectorised pass, nothing to sum.
      grad_mu = large_output(at::empty_like(mu));
      grad_logvar = large_output(at::empty_like(logvar));
      scalar_t* gm = grad_mu.mutable_data_ptr<scalar_t>();
      scalar_t* glv = grad_logvar.mutable_data_ptr<scalar_t>();
      row_map<acc_t>(
          rows, cols,
          [&](int64_t r, int64_t j) {
            const int64_t i = r * cols + j;
            const Vec<acc_t> gr(g[r]);
            const auto zv = load_widened<acc_t>(zp + i), mv = load_widened<acc_t>(m + i);
            const auto h = inv_std(load_widened<acc_t>(lv + i));
            const auto d = gaussian_ll_grad_mean(zv, mv, h, gr);
            store_narrowed<acc_t>(gz + i, Vec<acc_t>(0) - d);
            store_narrowed<acc_t>(gm + i, d);
            store_narrowed<acc_t>(glv + i, gaussian_ll_grad_logvar(zv, mv, h, gr));
          },
          [&](int64_t r, int64_t j) {
            const int64_t i = r * cols + j;
            const acc_t zv = static_cast<acc_t>(zp[i]), mv = static_cast<acc_t>(m[i]);
            const acc_t h = inv_std(static_cast<acc_t>(lv[i]));
            const acc_t d = gaussian_ll_grad_mean(zv, mv, h, g[r]);
            gz[i] = static_cast<scalar_t>(-d);
            gm[i] = static_cast<scalar_t>(d);
            glv[i] = static_cast<scalar_t>(gaussian_ll_grad_logvar(zv, mv, h, g[r]));
          });
      return;
    }
    row_map<acc_t>(
        rows, cols,
        [&](int64_t r, int64_t j) {
          const int64_t p = (r % mu_rows) * cols + j;
          store_narrowed<acc_t>(gz + r * cols + j,
                                gaussian_ll_grad_mean(load_widened<acc_t>(zp + r * cols + j), load_widened<acc_t>(m + p),
                                                      inv_std(load_widened<acc_t>(lv + p)), Vec<acc_t>(-g[r])));
        },
        [&](int64_t r, int64_t j) { gz[r * cols + j] = static_cast<scalar_t>(dz(r, j)); });
    auto acc_opts = mu.options().dtype(acc_dtype(mu.scalar_type()));
    auto gmu = at::empty(mu.sizes(), acc_opts);
    auto glv = at::empty(mu.sizes(), acc_opts);
    gaussian_param_sums<acc_t>(rows, mu_rows, cols, g, zp, m, lv, gmu.mutable_data_ptr<acc_t>(),
                               glv.mutable_data_ptr<acc_t>());
    grad_mu = gmu.to(mu.scalar_type());
    grad_logvar = glv.to(logvar.scalar_type());
  });
  return {grad_z, grad_mu, grad_logvar};
}

at::Tensor standard_normal_log_density(const at::Tensor& z) {
  check_matrix(z, "z");
  auto out = at::empty({z.size(0)}, z.options().dtype(acc_dtype(z.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "std_normal_density", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = z.size(1);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    row_sums<acc_t>(
        z.size(0), cols, out.mutable_data_ptr<acc_t>(),
        [&](int64_t r, int64_t j) { return standard_normal_ll(load_widened<acc_t>(zp + r * cols + j)); },
        [&](int64_t r, int64_t j) { return standard_normal_ll(static_cast<acc_t>(zp[r * cols + j])); });
  });
  return out;
}

at::Tensor standard_normal_log_density_backward(const at::Tensor& grad, const at::Tensor& z) {
  check_matrix(z, "z");
  check_row_grad(grad, z, "z");
  auto grad_z = large_output(at::empty_like(z));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "std_normal_density_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cols = z.size(1);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t* gz = grad_z.mutable_data_ptr<scalar_t>();
    row_map<acc_t>(
        z.size(0), cols,
        [&](int64_t r, int64_t j) {
          store_narrowed<acc_t>(gz + r * cols + j, Vec<acc_t>(-g[r]) * load_widened<acc_t>(zp + r * cols + j));
        },
        [&](int64_t r, int64_t j) { gz[r * cols + j] = static_cast<scalar_t>(-g[r] * static_cast<acc_t>(zp[r * cols + j])); });
  });
  return grad_z;
}

}  // namespace cpu
}  // namespace fastvae
