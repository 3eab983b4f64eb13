// The whole negative ELBO as one op: per row, -log p(x|z) + beta * KL, reduced over the batch in
// a fixed order, with every input gradient written in the same pass for an incoming gradient of
// 1 (pre-multiplied by the loss's own scale: -1/B or -1 for the likelihood, beta/B or beta for
// the KL). elbo_rescale(_) hands those on, or scales them, in the backward pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "common/checks.h"
#include "common/elbo_args.h"
#include "cpu/row_reduce.h"
#include "cpu/outputs.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

namespace {

// Bernoulli rows: ll[r] = sum_j x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)); grad = scale * (x - sigmoid(l)).
template <typename scalar_t, typename x_t>
void bernoulli_rows(const ElboArgs& a, const at::Tensor& recon, const at::Tensor& x, at::opmath_type<scalar_t>* ll,
                    scalar_t* g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cols = a.cols, x_rows = a.x_rows;
  const scalar_t* l = recon.const_data_ptr<scalar_t>();
  const x_t* xp = x.const_data_ptr<x_t>();
  const acc_t scale = static_cast<acc_t>(-a.row_scale), f = static_cast<acc_t>(a.row_scale);
  const Vec<acc_t> vscale(scale), vf(f);
  row_sums<acc_t>(
      a.rows, cols, ll,
      [&](int64_t r, int64_t j) {
        Vec<acc_t> dl;
        const auto v = bernoulli_ll_with_grad(load_widened<acc_t>(l + r * cols + j),
                                              load_widened<acc_t>(xp + (r % x_rows) * cols + j), &dl);
        if (g) store_narrowed<acc_t>(g + r * cols + j, dl * vscale);
        return v * vf;
      },
      [&](int64_t r, int64_t j) {
        acc_t dl;
        const acc_t v = bernoulli_ll_with_grad(static_cast<acc_t>(l[r * cols + j]),
                                               static_cast<acc_t>(xp[(r % x_rows) * cols + j]), &dl);
        if (g) g[r * cols + j] = static_cast<scalar_t>(dl * scale);
        return v * f;
      });
}

// Gaussian rows with the variance from a tensor (kLvTensor) or the constant a.lv_value. gm and
// glv (a per-element variance only) receive scale * d ll / d mean, scale * d ll / d logvar.
template <typename scalar_t, bool kLvTensor>
void gaussian_rows(const ElboArgs& a, const at::Tensor& mean, const at::Tensor& x, const scalar_t* lvp,
                   at::opmath_type<scalar_t>* ll, scalar_t* gm, scalar_t* glv) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cols = a.cols, x_rows = a.x_rows, lv_rows = kLvTensor ? a.lv_rows : 1;
  const scalar_t* m = mean.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t scale = static_cast<acc_t>(-a.row_scale);
  const acc_t lv_const = static_cast<acc_t>(a.lv_value);
  const acc_t h_const = inv_std(lv_const), f = static_cast<acc_t>(a.row_scale);
  const Vec<acc_t> vscale(scale), vlv_const(lv_const), vh_const(h_const), vf(f);
  row_sums<acc_t>(
      a.rows, cols, ll,
      [&](int64_t r, int64_t j) {
        Vec<acc_t> lv = vlv_const, h = vh_const;
        if constexpr (kLvTensor) {
          lv = load_widened<acc_t>(lvp + (r % lv_rows) * cols + j);
          h = inv_std(lv);
        }
        const auto xv = load_widened<acc_t>(xp + (r % x_rows) * cols + j);
        const auto mv = load_widened<acc_t>(m + r * cols + j);
        if (gm) store_narrowed<acc_t>(gm + r * cols + j, gaussian_ll_grad_mean(xv, mv, h, vscale));
        if (glv) store_narrowed<acc_t>(glv + r * cols + j, gaussian_ll_grad_logvar(xv, mv, h, vscale));
        return gaussian_ll(xv, mv, lv, h, vf);
      },
      [&](int64_t r, int64_t j) {
        acc_t lv = lv_const, h = h_const;
        if constexpr (kLvTensor) {
          lv = static_cast<acc_t>(lvp[(r % lv_rows) * cols + j]);
          h = inv_std(lv);
        }
        const acc_t xv = static_cast<acc_t>(xp[(r % x_rows) * cols + j]);
        const acc_t mv = static_cast<acc_t>(m[r * cols + j]);
        if (gm) gm[r * cols + j] = static_cast<scalar_t>(gaussian_ll_grad_mean(xv, mv, h, scale));
        if (glv) glv[r * cols + j] = static_cast<scalar_t>(gaussian_ll_grad_logvar(xv, mv, h, scale));
        return gaussian_ll(xv, mv, lv, h, f);
      });
}

// The gradient of a variance shared by rows (lv_rows < rows): -row_scale * sum over the rows that
// read it, in increasing row order (deterministic).
template <typename scalar_t>
void gaussian_shared_lv_grad(const ElboArgs& a, const at::Tensor& mean, const at::Tensor& x, const at::Tensor& lv,
                             at::Tensor& grad_lv) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cols = a.cols, x_rows = a.x_rows, lv_rows = a.lv_rows;
  const scalar_t* m = mean.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* lvp = lv.const_data_ptr<scalar_t>();
  const acc_t scale = static_cast<acc_t>(-a.row_scale);
  at::Tensor acc = std::is_same_v<scalar_t, acc_t> ? grad_lv : at::empty(lv.sizes(), lv.options().dtype(acc_dtype(lv.scalar_type())));
  // Row r reads logvar row r % lv_rows = b, so its inverse std is taken once per (b, j).
  repeat_sums_cached<acc_t>(
      a.rows, lv_rows, cols, acc.mutable_data_ptr<acc_t>(),
      [&](int64_t b, int64_t j) { return inv_std(static_cast<acc_t>(lvp[b * cols + j])); },
      [&](int64_t r, int64_t j, acc_t h) {
        return gaussian_ll_grad_logvar(static_cast<acc_t>(xp[(r % x_rows) * cols + j]),
                                       static_cast<acc_t>(m[r * cols + j]), h, scale);
      });
  if (!std::is_same_v<scalar_t, acc_t>) grad_lv.copy_(acc);
}

// KL per row from mu and logvar; with gm/glv, also beta * row_scale * its gradients.
template <typename scalar_t>
void kl_rows(const ElboArgs& a, const at::Tensor& mu, const at::Tensor& logvar, at::opmath_type<scalar_t>* kl,
             scalar_t* gm, scalar_t* glv) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cols = a.latent;
  const scalar_t* m = mu.const_data_ptr<scalar_t>();
  const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
  const acc_t scale = static_cast<acc_t>(a.beta * a.row_scale), f = static_cast<acc_t>(a.row_scale);
  const Vec<acc_t> vscale(scale), vf(f);
  row_sums<acc_t>(
      a.rows, cols, kl,
      [&](int64_t r, int64_t j) {
        const int64_t i = r * cols + j;
        const auto mv = load_widened<acc_t>(m + i);
        const auto lvv = load_widened<acc_t>(lv + i);
        if (gm) {
          store_narrowed<acc_t>(gm + i, vscale * mv);
          store_narrowed<acc_t>(glv + i, kl_std_normal_grad_logvar(lvv, vscale));
        }
        return kl_std_normal(mv, lvv) * vf;
      },
      [&](int64_t r, int64_t j) {
        const int64_t i = r * cols + j;
        const acc_t mv = static_cast<acc_t>(m[i]);
        const acc_t lvv = static_cast<acc_t>(lv[i]);
        if (gm) {
          gm[i] = static_cast<scalar_t>(scale * mv);
          glv[i] = static_cast<scalar_t>(kl_std_normal_grad_logvar(lvv, scale));
        }
        return kl_std_normal(mv, lvv) * f;
      });
}

}  // namespace

ElboOutputs elbo_loss(const at::Tensor& recon, const at::Tensor& x, const std::optional<at::Tensor>& kl,
                      const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                      const std::optional<at::Tensor>& obs_logvar, double obs_logvar_value,
                      c10::string_view likelihood, double beta, c10::string_view reduction,
                      std::array<bool, 3> grad_mask) {
  const ElboArgs a = check_elbo_args(recon, x, kl, mu, logvar, obs_logvar, obs_logvar_value, likelihood, beta,
                                     reduction, grad_mask);
  const auto acc_opts = recon.options().dtype(acc_dtype(recon.scalar_type()));
  const bool none = a.reduction == ElboReduction::kNone;
  ElboBuffers out = elbo_buffers(a, recon, kl, mu, logvar, obs_logvar);
  for (const at::Tensor& grad : {out.grad_recon, out.grad_mu, out.grad_logvar, out.grad_lv}) large_output(grad);
  at::Tensor &loss = out.loss, &ll = out.ll, &grad_recon = out.grad_recon, &grad_kl = out.grad_kl,
             &grad_mu = out.grad_mu, &grad_logvar = out.grad_logvar, &grad_lv = out.grad_lv;
  at::Tensor kl_buf = a.has_kl ? *kl : at::empty({a.rows}, acc_opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, recon.scalar_type(), "elbo_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* llp = ll.mutable_data_ptr<acc_t>();
    scalar_t* gr = a.grad_recon ? grad_recon.mutable_data_ptr<scalar_t>() : nullptr;
    if (!a.gaussian) {
      switch (x.scalar_type()) {
        case at::kByte: bernoulli_rows<scalar_t, uint8_t>(a, recon, x, llp, gr); break;
        case at::kBool: bernoulli_rows<scalar_t, bool>(a, recon, x, llp, gr); break;
        default: bernoulli_rows<scalar_t, scalar_t>(a, recon, x, llp, gr);
      }
    } else if (a.lv_tensor) {
      scalar_t* glv = a.grad_lv && !a.lv_shared() ? grad_lv.mutable_data_ptr<scalar_t>() : nullptr;
      gaussian_rows<scalar_t, true>(a, recon, x, obs_logvar->const_data_ptr<scalar_t>(), llp, gr, glv);
      if (a.grad_lv && a.lv_shared()) gaussian_shared_lv_grad<scalar_t>(a, recon, x, *obs_logvar, grad_lv);
    } else {
      gaussian_rows<scalar_t, false>(a, recon, x, nullptr, llp, gr, nullptr);
    }
    if (!a.has_kl) {
      const bool g = a.grad_kl;
      kl_rows<scalar_t>(a, *mu, *logvar, kl_buf.mutable_data_ptr<acc_t>(),
                        g ? grad_mu.mutable_data_ptr<scalar_t>() : nullptr,
                        g ? grad_logvar.mutable_data_ptr<scalar_t>() : nullptr);
    } else if (a.grad_kl) {
      grad_kl.fill_(a.beta * a.row_scale);
    }
    // loss_r = beta * kl_r - ll_r; the batch sum in double and row order, whatever the threads.
    // The row sums above hold row_scale times each term already (a mean stays finite where a
    // row's sum would not be); a KL passed in gets its factor here.
    const acc_t* klp = kl_buf.const_data_ptr<acc_t>();
    const acc_t b = static_cast<acc_t>(a.beta);
    if (none) {
      for (int64_t r = 0; r < a.rows; ++r) llp[r] = b * klp[r] - llp[r];
    } else {
      const double kl_scale = a.beta * (a.has_kl ? a.row_scale : 1.0);
      double total = 0.0;
      for (int64_t r = 0; r < a.rows; ++r) total += kl_scale * static_cast<double>(klp[r]) - static_cast<double>(llp[r]);
      *loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(total);
    }
  });
  return out.outputs();
}

namespace {

// Incoming gradient: one value for every row, or one per row (any stride).
struct RowGrad {
  const at::Tensor& g;
  int64_t n, stride;
  explicit RowGrad(const at::Tensor& grad) : g(grad), n(grad.numel()), stride(grad.dim() == 1 ? grad.stride(0) : 0) {}
};

// out[r, :] = in[r, :] * g[r] (or g). In place, rows whose factor is exactly 1 are not touched.
void rescale_one(const at::Tensor& grad, const at::Tensor& in, const at::Tensor& out, bool in_place) {
  if (in.numel() == 0) return;
  const RowGrad rg(grad);
  const int64_t rows = rg.n == 1 ? 1 : in.size(0);
  const int64_t inner = in.numel() / rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "elbo_rescale_grad", [&] {
    using g_t = scalar_t;
    const g_t* gp = grad.const_data_ptr<g_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "elbo_rescale", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* ip = in.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(inner, 1)), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const g_t gv = gp[r * rg.stride];
          if (in_place && gv == g_t(1)) continue;
          const acc_t s = static_cast<acc_t>(gv);
          const Vec<acc_t> sv(s);
          int64_t j = r * inner;
          const int64_t end = j + inner;
          for (; j + Vec<acc_t>::size() <= end; j += Vec<acc_t>::size())
            store_narrowed<acc_t>(op + j, load_widened<acc_t>(ip + j) * sv);
          for (; j < end; ++j) op[j] = static_cast<scalar_t>(static_cast<acc_t>(ip[j]) * s);
        }
      });
    });
  });
}

}  // namespace

void elbo_rescale_(const at::Tensor& grad, at::TensorList grads) {
  check_elbo_rescale_args(grad, grads);
  // The loss's own gradient (1): nothing to do, the tensors already hold it.
  if (grad.numel() == 1) {
    bool one = false;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "elbo_rescale_check", [&] {
      one = *grad.const_data_ptr<scalar_t>() == scalar_t(1);
    });
    if (one) return;
  }
  for (const auto& t : grads) rescale_one(grad, t, t, /*in_place=*/true);
}

std::vector<at::Tensor> elbo_rescale(const at::Tensor& grad, at::TensorList grads) {
  check_elbo_rescale_args(grad, grads);
  std::vector<at::Tensor> out;
  out.reserve(grads.size());
  for (const auto& t : grads) {
    out.push_back(large_output(at::empty_like(t)));
    rescale_one(grad, t, out.back(), /*in_place=*/false);
  }
  return out;
}

}  // namespace cpu
}  // namespace fastvae
