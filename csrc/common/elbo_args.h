// Argument checks and the resolved configuration of the fused ELBO op (fastvae::elbo_loss),
// shared by its CPU and CUDA kernels so that both refuse bad input with the same message.
// User-facing mistakes raise ValueError in Python (TORCH_CHECK_VALUE), naming the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ATen_fwd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <array>
#include <cmath>
#include <optional>
#include <tuple>

#include "common/checks.h"

namespace fastvae {

enum class ElboReduction { kMean, kSum, kNone };

struct ElboArgs {
  int64_t rows = 0, cols = 0, x_rows = 0;
  bool gaussian = false;
  ElboReduction reduction = ElboReduction::kMean;
  bool has_kl = false;         // the KL per row is given; else it is computed from mu and logvar
  int64_t latent = 0;          // columns of mu / logvar
  bool lv_tensor = false;      // Gaussian with a variance tensor; else the constant lv_value
  int64_t lv_rows = 0;
  double lv_value = 0.0, beta = 1.0;
  // Which gradients the forward pass writes (for an incoming gradient of 1).
  bool grad_recon = false, grad_kl = false, grad_lv = false;
  // d loss / d loss_row for an incoming gradient of 1: 1/rows for the mean, else 1.
  double row_scale = 1.0;

  bool lv_shared() const { return lv_tensor && lv_rows != rows; }
};

// The reduction argument of the ELBO ops ("mean", "sum" or "none").
inline ElboReduction parse_elbo_reduction(c10::string_view reduction) {
  if (reduction == "mean") return ElboReduction::kMean;
  if (reduction == "sum") return ElboReduction::kSum;
  TORCH_CHECK_VALUE(reduction == "none", "fastvae: reduction must be 'mean', 'sum' or 'none', got '", reduction, "'");
  return ElboReduction::kNone;
}

// Parses and checks every argument of elbo_loss. Mirrors fastvae/ops.py's fake implementation.
inline ElboArgs check_elbo_args(const at::Tensor& recon, const at::Tensor& x, const std::optional<at::Tensor>& kl,
                                const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                                const std::optional<at::Tensor>& obs_logvar, double obs_logvar_value,
                                c10::string_view likelihood, double beta, c10::string_view reduction,
                                const std::array<bool, 3>& grad_mask) {
  ElboArgs a;
  TORCH_CHECK_VALUE(likelihood == "bernoulli" || likelihood == "gaussian",
                    "fastvae: likelihood must be 'bernoulli' or 'gaussian', got '", likelihood, "'");
  a.gaussian = likelihood == "gaussian";
  a.reduction = parse_elbo_reduction(reduction);
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta >= 0.0, "fastvae: beta must be a finite number >= 0, got ", beta);
  TORCH_CHECK_VALUE(std::isfinite(obs_logvar_value), "fastvae: obs_logvar must be finite, got ", obs_logvar_value);
  a.beta = beta;
  a.lv_value = obs_logvar_value;

  TORCH_CHECK_VALUE(recon.dim() == 2, "fastvae: recon must be 2-D (rows, cols), got ", recon.dim(), "-D");
  TORCH_CHECK_VALUE(recon.numel() > 0, "fastvae: recon is empty (shape ", recon.sizes(),
                    "); fastvae ops need at least one element");
  check_matrix(recon, "recon");
  a.rows = recon.size(0);
  a.cols = recon.size(1);
  a.row_scale = a.reduction == ElboReduction::kMean ? 1.0 / static_cast<double>(a.rows) : 1.0;

  TORCH_CHECK_VALUE(x.dim() == 2 && x.is_contiguous(), "fastvae: x must be a contiguous 2-D tensor");
  if (a.gaussian) {
    TORCH_CHECK_VALUE(x.scalar_type() == recon.scalar_type(), "fastvae: x must have the dtype of recon (",
                      recon.scalar_type(), ") for a Gaussian likelihood, got ", x.scalar_type());
  } else {
    TORCH_CHECK_VALUE(x.scalar_type() == recon.scalar_type() || x.scalar_type() == at::kByte ||
                          x.scalar_type() == at::kBool,
                      "fastvae: x must have the dtype of recon (", recon.scalar_type(), "), uint8 or bool, got ",
                      x.scalar_type());
  }
  check_row_broadcast(recon, "recon", x, "x");
  a.x_rows = x.size(0);

  const at::ScalarType acc = acc_dtype(recon.scalar_type());
  if (kl.has_value() && kl->defined()) {
    a.has_kl = true;
    check_same_device(recon, "recon", *kl, "kl");
    TORCH_CHECK_VALUE(kl->dim() == 1 && kl->size(0) == a.rows,
                      "fastvae: recon has ", a.rows, " examples but kl has shape ", kl->sizes(),
                      ": the batch dims must agree");
    TORCH_CHECK_VALUE(kl->scalar_type() == acc && kl->is_contiguous(), "fastvae: kl must be a contiguous ", acc,
                      " tensor (the accumulation dtype of recon), got ", kl->scalar_type());
  } else {
    TORCH_CHECK_VALUE(mu.has_value() && mu->defined() && logvar.has_value() && logvar->defined(),
                      "fastvae: elbo_loss needs kl, or mu and logvar");
    check_matrix(*mu, "mu");
    check_matrix(*logvar, "logvar");
    check_same_shape(*mu, "mu", *logvar, "logvar");
    check_same_device(recon, "recon", *mu, "mu");
    TORCH_CHECK_VALUE(mu->size(0) == a.rows, "fastvae: recon has ", a.rows, " examples but mu/logvar have ",
                      mu->size(0), ": the batch dims must agree");
    TORCH_CHECK_VALUE(mu->scalar_type() == recon.scalar_type() && logvar->scalar_type() == recon.scalar_type(),
                      "fastvae: mu and logvar must have the dtype of recon (", recon.scalar_type(), ")");
    a.latent = mu->size(1);
  }

  if (a.gaussian && obs_logvar.has_value() && obs_logvar->defined()) {
    a.lv_tensor = true;
    check_matrix(*obs_logvar, "obs_logvar");
    TORCH_CHECK_VALUE(obs_logvar->scalar_type() == recon.scalar_type(), "fastvae: obs_logvar must have the dtype "
                      "of recon (", recon.scalar_type(), "), got ", obs_logvar->scalar_type());
    check_row_broadcast(recon, "recon", *obs_logvar, "obs_logvar");
    a.lv_rows = obs_logvar->size(0);
  }

  a.grad_recon = grad_mask[0];
  a.grad_kl = grad_mask[1];
  // A shared variance's gradient is a sum over rows: it can be pre-scaled only when one incoming
  // gradient scales every row (mean, sum); with reduction "none" the backward pass computes it.
  a.grad_lv = grad_mask[2] && a.lv_tensor && (!a.lv_shared() || a.reduction != ElboReduction::kNone);
  return a;
}

// The arguments of elbo_rescale(_): one incoming gradient (a scalar or one per row) and the
// contiguous floating tensors it scales.
inline void check_elbo_rescale_args(const at::Tensor& grad, at::TensorList grads) {
  TORCH_CHECK(grad.dim() <= 1 && grad.numel() >= 1 && is_reduced_or_float(grad.scalar_type()),
              "fastvae: elbo_rescale: grad must be a floating 0-dim or 1-D tensor, got shape ", grad.sizes());
  for (const auto& t : grads) {
    check_same_device(grad, "grad", t, "grads");
    TORCH_CHECK(t.is_contiguous() && is_reduced_or_float(t.scalar_type()),
                "fastvae: elbo_rescale: every tensor in grads must be contiguous and floating");
    TORCH_CHECK(grad.numel() == 1 || (t.dim() >= 1 && t.size(0) == grad.numel()),
                "fastvae: elbo_rescale: a per-row grad (", grad.numel(), " rows) needs tensors with as many rows, got ",
                t.sizes());
  }
}

// The op's outputs, allocated alike on every device: the loss (a scalar, or one per row for
// "none"), the per-row likelihood (the loss itself for "none"), and the gradients the forward
// pass writes for an incoming gradient of 1 (empty where not asked for).
struct ElboBuffers {
  at::Tensor loss, ll, grad_recon, grad_kl, grad_mu, grad_logvar, grad_lv;

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> outputs() const {
    return {loss, grad_recon, grad_kl, grad_mu, grad_logvar, grad_lv};
  }
};

inline ElboBuffers elbo_buffers(const ElboArgs& a, const at::Tensor& recon, const std::optional<at::Tensor>& kl,
                                const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                                const std::optional<at::Tensor>& obs_logvar) {
  const auto acc_opts = recon.options().dtype(acc_dtype(recon.scalar_type()));
  const bool none = a.reduction == ElboReduction::kNone;
  const auto empty = [&] { return at::empty({0}, recon.options()); };
  ElboBuffers b;
  b.loss = at::empty(none ? at::IntArrayRef{a.rows} : at::IntArrayRef{}, acc_opts);
  b.ll = none ? b.loss : at::empty({a.rows}, acc_opts);
  b.grad_recon = a.grad_recon ? at::empty_like(recon) : empty();
  b.grad_kl = a.grad_kl && a.has_kl ? at::empty_like(*kl) : empty();
  b.grad_mu = a.grad_kl && !a.has_kl ? at::empty_like(*mu) : empty();
  b.grad_logvar = a.grad_kl && !a.has_kl ? at::empty_like(*logvar) : empty();
  b.grad_lv = a.grad_lv ? at::empty_like(*obs_logvar) : empty();
  return b;
}

}  // namespace fastvae
