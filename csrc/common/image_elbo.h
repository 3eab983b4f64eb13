// The whole negative ELBO of an image VAE (fastvae::image_elbo_loss), shared by the CPU and CUDA
// entry points (host code): one of the image likelihood kernels (discretized mixture of
// logistics, one discretized logistic, categorical, continuous Bernoulli) with its gradient
// written in the same pass, the KL (given, or closed form from mu and logvar), beta, and the
// reduction over the batch. Every gradient is returned for an incoming gradient of 1, so that
// the autograd kernel (csrc/autograd/image_elbo.cpp) hands them on, or scales them in place.
//
// recon in each likelihood's layout (spatial dims any, merged here; any strides):
//   "dmol"                 (B, 10 M | 3 M, *spatial), x (B, 3 | 1, *spatial) levels or values in [-1, 1]
//   "logistic"             (B, 2 C, *spatial): C means then C log-scales, x (B, C, *spatial)
//   "categorical"          (B, 2^bits, C, *spatial) logits, x (B, C, *spatial) uint8 / int64 levels
//   "continuous_bernoulli" (B, *) logits, x of its shape in [0, 1] (recon's dtype, bool or uint8)
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <c10/util/strides.h>

#include <array>
#include <cmath>
#include <optional>

#include "common/categorical.h"
#include "common/checks.h"
#include "common/discretized_logistic_checks.h"
#include "common/elbo_args.h"
#include "ops.h"

namespace fastvae {

enum class ImageLikelihood { kDmol, kLogistic, kCategorical, kContinuousBernoulli };

struct ImageElboArgs {
  ImageLikelihood likelihood = ImageLikelihood::kDmol;
  ElboReduction reduction = ElboReduction::kMean;
  double beta = 1.0, row_scale = 1.0;
  int64_t rows = 0;
  bool has_kl = false, grad_recon = false, grad_kl = false;
};

inline ImageElboArgs check_image_elbo_args(const at::Tensor& recon, const std::optional<at::Tensor>& kl,
                                           const std::optional<at::Tensor>& mu,
                                           const std::optional<at::Tensor>& logvar, c10::string_view likelihood,
                                           double beta, c10::string_view reduction,
                                           const std::array<bool, 2>& grad_mask) {
  ImageElboArgs a;
  if (likelihood == "dmol") {
    a.likelihood = ImageLikelihood::kDmol;
  } else if (likelihood == "logistic") {
    a.likelihood = ImageLikelihood::kLogistic;
  } else if (likelihood == "categorical") {
    a.likelihood = ImageLikelihood::kCategorical;
  } else {
    TORCH_CHECK_VALUE(likelihood == "continuous_bernoulli", "fastvae: likelihood must be 'dmol', 'logistic', "
                      "'categorical' or 'continuous_bernoulli', got '", likelihood, "'");
    a.likelihood = ImageLikelihood::kContinuousBernoulli;
  }
  a.reduction = parse_elbo_reduction(reduction);
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta >= 0.0, "fastvae: beta must be a finite number >= 0, got ", beta);
  a.beta = beta;
  TORCH_CHECK_VALUE(recon.dim() >= 2, "fastvae: recon must be (B, ...) with at least 2 dims, got ", recon.dim(),
                    "-D");
  TORCH_CHECK_VALUE(recon.numel() > 0, "fastvae: recon is empty (shape ", recon.sizes(),
                    "); fastvae ops need at least one element");
  TORCH_CHECK_VALUE(is_reduced_or_float(recon.scalar_type()),
                    "fastvae: recon must be float64, float32, bfloat16 or float16, got ", recon.scalar_type());
  a.rows = recon.size(0);
  a.row_scale = a.reduction == ElboReduction::kMean ? 1.0 / static_cast<double>(a.rows) : 1.0;
  const at::ScalarType acc = acc_dtype(recon.scalar_type());
  if (kl.has_value() && kl->defined()) {
    a.has_kl = true;
    check_same_device(recon, "recon", *kl, "kl");
    TORCH_CHECK_VALUE(kl->dim() == 1 && kl->size(0) == a.rows, "fastvae: recon has ", a.rows,
                      " examples but kl has shape ", kl->sizes(), ": the batch dims must agree");
    TORCH_CHECK_VALUE(kl->scalar_type() == acc && kl->is_contiguous(), "fastvae: kl must be a contiguous ", acc,
                      " tensor (the accumulation dtype of recon), got ", kl->scalar_type());
  } else {
    TORCH_CHECK_VALUE(mu.has_value() && mu->defined() && logvar.has_value() && logvar->defined(),
                      "fastvae: image_elbo_loss needs kl, or mu and logvar");
    check_same_device(recon, "recon", *mu, "mu");
    TORCH_CHECK_VALUE(mu->dim() == 2 && mu->size(0) == a.rows, "fastvae: recon has ", a.rows,
                      " examples but mu has shape ", mu->sizes(), ": mu must be (B, latent)");
    TORCH_CHECK_VALUE(mu->scalar_type() == recon.scalar_type() && logvar->scalar_type() == recon.scalar_type(),
                      "fastvae: mu and logvar must have the dtype of recon (", recon.scalar_type(), ")");
  }
  a.grad_recon = grad_mask[0];
  a.grad_kl = grad_mask[1];
  return a;
}

// Dense with the batch dim outermost (contiguous, channels-last ...): each row one block of memory.
inline bool rows_dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() && (t.size(0) == 1 || t.stride(0) * t.size(0) == t.numel());
}

// d loss / d recon laid out exactly as fastvae/ops.py's fake says (_grad_like: recon's strides when
// recon is rows_dense, e.g. channels-last, else contiguous), from a kernel's gradient g of
// recon's element count: a view when g's memory already is that layout (every usual case; the
// strides of size-1 dims are set to the fake's), a copy otherwise.
inline at::Tensor as_grad_of(const at::Tensor& g, const at::Tensor& recon) {
  const at::Tensor shaped = g.reshape(recon.sizes());
  const bool keep = rows_dense(recon);
  const at::DimVector want = keep ? at::DimVector(recon.strides()) : c10::contiguous_strides(recon.sizes());
  bool same = true;
  for (int64_t d = 0; d < recon.dim(); ++d) same = same && (recon.size(d) == 1 || shaped.stride(d) == want[d]);
  if (!same) return (keep ? at::empty_like(recon) : at::empty(recon.sizes(), recon.options())).copy_(shaped);
  return shaped.strides() == at::IntArrayRef(want) ? shaped : shaped.as_strided(recon.sizes(), want);
}

// Backend: a struct of static functions calling one backend's kernels (FASTVAE_IMAGE_ELBO_LOSS
// below): dmol, logistic, categorical, continuous_bernoulli, kl, kl_backward.
template <typename Backend>
ImageElboOutputs image_elbo_loss_with(const at::Tensor& recon, const at::Tensor& x,
                                      const std::optional<at::Tensor>& kl, const std::optional<at::Tensor>& mu,
                                      const std::optional<at::Tensor>& logvar, c10::string_view likelihood,
                                      int64_t num_mixtures, int64_t bits, double beta, c10::string_view reduction,
                                      std::array<bool, 2> grad_mask) {
  const ImageElboArgs a = check_image_elbo_args(recon, kl, mu, logvar, likelihood, beta, reduction, grad_mask);
  check_same_device(recon, "recon", x, "x");
  const int64_t B = a.rows;
  const bool want = a.grad_recon;
  // loss_r = beta kl_r - ll_r: d loss / d recon = -row_scale d ll / d recon. The categorical
  // kernel writes it so scaled; the others' gradients are scaled in place below.
  const double scale = -a.row_scale;
  bool scaled = false;
  at::Tensor ll, grad;
  switch (a.likelihood) {
    case ImageLikelihood::kDmol: {
      TORCH_CHECK_VALUE(x.dim() >= 2 && x.size(0) == B, "fastvae: x must be (B, C, *spatial), got shape ", x.sizes());
      const at::Tensor params = recon.reshape({B, recon.size(1), -1});
      std::tie(ll, grad) = Backend::dmol(params, x.reshape({B, x.size(1), -1}), num_mixtures, bits, want);
      break;
    }
    case ImageLikelihood::kLogistic: {
      TORCH_CHECK_VALUE(x.dim() >= 2 && x.size(0) == B && recon.size(1) == 2 * x.size(1), "fastvae: recon (B, 2 C, "
                        "*spatial) has shape ", recon.sizes(), " but x has shape ", x.sizes());
      const int64_t C = x.size(1);
      const at::Tensor p = recon.reshape({B, 2 * C, -1});
      at::Tensor gm, gl;
      std::tie(ll, gm, gl) =
          Backend::logistic(p.narrow(1, 0, C), p.narrow(1, C, C), x.reshape({B, C, -1}), bits, want);
      if (want) grad = at::cat({gm, gl}, 1);
      break;
    }
    case ImageLikelihood::kCategorical: {
      TORCH_CHECK_VALUE(recon.dim() >= 3 && recon.size(1) == (int64_t{1} << bits), "fastvae: recon must be (B, 2^bits"
                        " = ", int64_t{1} << bits, ", C, *spatial) logits, got shape ", recon.sizes());
      const at::Tensor logits = recon.reshape({B, recon.size(1), recon.size(2), -1});
      TORCH_CHECK_VALUE(x.numel() == logits.size(2) * logits.size(3) * B, "fastvae: x has shape ", x.sizes(),
                        " but recon has shape ", recon.sizes());
      std::tie(ll, grad) = Backend::categorical(logits, x.reshape({B, -1}).contiguous(), want, scale);
      scaled = true;
      break;
    }
    case ImageLikelihood::kContinuousBernoulli: {
      TORCH_CHECK_VALUE(x.sizes() == recon.sizes(), "fastvae: x has shape ", x.sizes(), " but recon has shape ",
                        recon.sizes());
      std::tie(ll, grad) = Backend::continuous_bernoulli(recon.reshape({B, -1}).contiguous(),
                                                         x.reshape({B, -1}).contiguous(), want);
      break;
    }
  }
  const auto empty = [&] { return at::empty({0}, recon.options()); };
  if (want) {
    grad = as_grad_of(grad, recon);
    if (!scaled) {
      if (scale == -1.0) {
        grad.neg_();
      } else {
        grad.mul_(scale);
      }
    }
  }
  at::Tensor kl_rows, grad_kl = empty(), grad_mu = empty(), grad_logvar = empty();
  if (a.has_kl) {
    kl_rows = *kl;
    if (a.grad_kl) grad_kl = at::full_like(*kl, a.beta * a.row_scale);
  } else {
    kl_rows = Backend::kl(*mu, *logvar);
    if (a.grad_kl) std::tie(grad_mu, grad_logvar) = Backend::kl_backward(at::full_like(kl_rows, a.beta * a.row_scale),
                                                                         *mu, *logvar);
  }
  const at::Tensor terms = at::sub(kl_rows.mul(a.beta), ll);
  at::Tensor loss;
  if (a.reduction == ElboReduction::kNone) {
    loss = terms;
  } else {
    loss = a.reduction == ElboReduction::kSum ? terms.sum() : terms.mean();
  }
  return {loss, want ? grad : empty(), grad_kl, grad_mu, grad_logvar};
}

// Defines <backend>::image_elbo_loss inside namespace fastvae::cpu or fastvae::cuda (the
// unqualified kernel names below resolve to that namespace's kernels).
#define FASTVAE_IMAGE_ELBO_LOSS                                                                        \
  namespace {                                                                                          \
  struct ImageElboKernels {                                                                            \
    static TensorPair dmol(const at::Tensor& params, const at::Tensor& x, int64_t m, int64_t bits,     \
                           bool grad) {                                                                \
      return discretized_mix_logistic_log_likelihood_with_grad(params, x, m, bits, grad);              \
    }                                                                                                  \
    static TensorTriple logistic(const at::Tensor& mean, const at::Tensor& log_scale,                  \
                                 const at::Tensor& x, int64_t bits, bool grad) {                       \
      return discretized_logistic_log_likelihood_with_grad(mean, log_scale, x, bits, grad);            \
    }                                                                                                  \
    static TensorPair categorical(const at::Tensor& logits, const at::Tensor& x, bool grad,            \
                                  double scale) {                                                      \
      return categorical_log_likelihood_scaled(logits, x, grad, scale);                                \
    }                                                                                                  \
    static TensorPair continuous_bernoulli(const at::Tensor& logits, const at::Tensor& x, bool grad) { \
      return continuous_bernoulli_log_likelihood(logits, x, grad);                                     \
    }                                                                                                  \
    static at::Tensor kl(const at::Tensor& mu, const at::Tensor& logvar) {                             \
      return kl_standard_normal(mu, logvar);                                                           \
    }                                                                                                  \
    static TensorPair kl_backward(const at::Tensor& grad, const at::Tensor& mu,                        \
                                  const at::Tensor& logvar) {                                          \
      return kl_standard_normal_backward(grad, mu, logvar);                                            \
    }                                                                                                  \
  };                                                                                                   \
  }                                                                                                    \
  ImageElboOutputs image_elbo_loss(const at::Tensor& recon, const at::Tensor& x,                       \
                                   const std::optional<at::Tensor>& kl,                                \
                                   const std::optional<at::Tensor>& mu,                                \
                                   const std::optional<at::Tensor>& logvar,                            \
                                   c10::string_view likelihood, int64_t num_mixtures, int64_t bits,    \
                                   double beta, c10::string_view reduction,                            \
                                   std::array<bool, 2> grad_mask) {                                    \
    return image_elbo_loss_with<ImageElboKernels>(recon, x, kl, mu, logvar, likelihood, num_mixtures,  \
                                                  bits, beta, reduction, grad_mask);                   \
  }

}  // namespace fastvae
