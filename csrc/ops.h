// Declarations of every kernel entry point; csrc/register.cpp binds them to the dispatcher.
// csrc/cpu/<family>.cpp and csrc/cuda/<family>.cu implement the same list, file for file.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <ATen/core/Generator.h>

#include <c10/util/string_view.h>

#include <array>
#include <tuple>
#include <vector>

namespace fastvae {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;
using TensorTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using TensorQuad = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// elbo_loss: (loss, grad_recon, grad_kl, grad_mu, grad_logvar, grad_obs_logvar).
using ElboOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// image_elbo_loss: (loss, grad_recon, grad_kl, grad_mu, grad_logvar).
using ImageElboOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

#define FASTVAE_DECLARE_KERNELS(ns)                                                              \
  namespace ns {                                                                                 \
  /* sampling */                                                                                 \
  /* (z, rng_state) and (z, kl, rng_state): rng_state is the (seed, offset) drawn from      */  \
  /* generator, or a copy of the given one.                                               */  \
  TensorPair reparameterize(const at::Tensor& mu, const at::Tensor& logvar, int64_t num_samples, \
                            std::optional<at::Generator> generator,                              \
                            const std::optional<at::Tensor>& rng_state);                         \
  TensorTriple reparameterize_with_kl(const at::Tensor& mu, const at::Tensor& logvar,            \
                                      int64_t num_samples, std::optional<at::Generator> generator, \
                                      const std::optional<at::Tensor>& rng_state);               \
  TensorPair reparameterize_backward(const at::Tensor& grad_z, const at::Tensor& mu,             \
                                     const at::Tensor& logvar, const at::Tensor& rng_state,      \
                                     const std::optional<at::Tensor>& grad_kl);                  \
  /* kl */                                                                                       \
  at::Tensor kl_standard_normal(const at::Tensor& mu, const at::Tensor& logvar);                 \
  TensorPair kl_standard_normal_backward(const at::Tensor& grad, const at::Tensor& mu,           \
                                         const at::Tensor& logvar);                              \
  /* kl_normal: KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)), the prior broadcast over rows, */ \
  /* alone and with the sample of q (the four gradients: mu_q, logvar_q, mu_p, logvar_p)       */ \
  at::Tensor kl_normal(const at::Tensor& mu_q, const at::Tensor& logvar_q, const at::Tensor& mu_p, \
                       const at::Tensor& logvar_p);                                              \
  TensorQuad kl_normal_backward(const at::Tensor& grad, const at::Tensor& mu_q,                  \
                                const at::Tensor& logvar_q, const at::Tensor& mu_p,              \
                                const at::Tensor& logvar_p);                                     \
  TensorTriple reparameterize_with_kl_normal(const at::Tensor& mu, const at::Tensor& logvar,     \
                                             const at::Tensor& prior_mu,                         \
                                             const at::Tensor& prior_logvar,                     \
                                             std::optional<int64_t> num_samples,                 \
                                             std::optional<at::Generator> generator,             \
                                             const std::optional<at::Tensor>& rng_state);        \
  TensorQuad reparameterize_with_kl_normal_backward(const at::Tensor& grad_z, const at::Tensor& mu, \
                                                    const at::Tensor& logvar,                    \
                                                    const at::Tensor& prior_mu,                  \
                                                    const at::Tensor& prior_logvar,              \
                                                    const at::Tensor& rng_state,                 \
                                                    const at::Tensor& grad_kl);                  \
  /* likelihood */                                                                               \
  TensorPair bernoulli_log_likelihood(const at::Tensor& logits, const at::Tensor& x,             \
                                      bool compute_grad);                                        \
  at::Tensor bernoulli_log_likelihood_(const at::Tensor& logits, const at::Tensor& x);           \
  at::Tensor gaussian_log_likelihood(const at::Tensor& mean, const at::Tensor& x,                \
                                     const at::Tensor& logvar);                                  \
  TensorPair gaussian_log_likelihood_backward(const at::Tensor& grad, const at::Tensor& mean,    \
                                              const at::Tensor& x, const at::Tensor& logvar,     \
                                              bool logvar_grad);                                 \
  /* continuous_bernoulli: x in [0, 1], logits rows (as bernoulli_log_likelihood) */           \
  TensorPair continuous_bernoulli_log_likelihood(const at::Tensor& logits, const at::Tensor& x,  \
                                                 bool compute_grad);                             \
  /* categorical: logits (B, K, C, P) any strides, x (B, C * P) uint8 / int64 levels */         \
  TensorPair categorical_log_likelihood(const at::Tensor& logits, const at::Tensor& x,           \
                                        bool compute_grad);                                      \
  /* discretized_logistic: (B,) log p(x) of 2^bits-level data, and with compute_grad the   */  \
  /* gradients for an incoming gradient of 1 (else empty)                                   */  \
  TensorPair discretized_mix_logistic_log_likelihood_with_grad(const at::Tensor& params, const at::Tensor& x, \
                                                     int64_t num_mixtures, int64_t bits,          \
                                                     bool compute_grad);                         \
  TensorTriple discretized_logistic_log_likelihood_with_grad(const at::Tensor& mean,                       \
                                                   const at::Tensor& log_scale,                  \
                                                   const at::Tensor& x, int64_t bits,            \
                                                   bool compute_grad);                           \
  /* the samplers of the discrete likelihoods: integer levels (uint8 up to 256 levels, else  */ \
  /* int32) from the Philox stream of (generator or rng_state), as the Gaussian sampler's     */ \
  at::Tensor sample_discretized_mix_logistic(const at::Tensor& params, int64_t num_mixtures,      \
                                             int64_t bits, std::optional<at::Generator> generator, \
                                             const std::optional<at::Tensor>& rng_state);        \
  at::Tensor sample_discretized_logistic(const at::Tensor& mean, const at::Tensor& log_scale,    \
                                         int64_t bits, std::optional<at::Generator> generator,    \
                                         const std::optional<at::Tensor>& rng_state);            \
  at::Tensor sample_categorical(const at::Tensor& logits, std::optional<at::Generator> generator, \
                                const std::optional<at::Tensor>& rng_state);                     \
  /* density */                                                                                  \
  at::Tensor gaussian_log_density(const at::Tensor& z, const at::Tensor& mu,                     \
                                  const at::Tensor& logvar);                                     \
  TensorTriple gaussian_log_density_backward(const at::Tensor& grad, const at::Tensor& z,        \
                                             const at::Tensor& mu, const at::Tensor& logvar);    \
  at::Tensor standard_normal_log_density(const at::Tensor& z);                                   \
  at::Tensor standard_normal_log_density_backward(const at::Tensor& grad, const at::Tensor& z);  \
  /* elbo */                                                                                     \
  ElboOutputs elbo_loss(const at::Tensor& recon, const at::Tensor& x,                            \
                        const std::optional<at::Tensor>& kl, const std::optional<at::Tensor>& mu, \
                        const std::optional<at::Tensor>& logvar,                                 \
                        const std::optional<at::Tensor>& obs_logvar, double obs_logvar_value,    \
                        c10::string_view likelihood, double beta, c10::string_view reduction,    \
                        std::array<bool, 3> grad_mask);                                        \
  void elbo_rescale_(const at::Tensor& grad, at::TensorList grads);                              \
  /* image_elbo: the ELBO of an image likelihood (csrc/common/image_elbo.h) */                  \
  ImageElboOutputs image_elbo_loss(const at::Tensor& recon, const at::Tensor& x,                 \
                                   const std::optional<at::Tensor>& kl,                          \
                                   const std::optional<at::Tensor>& mu,                          \
                                   const std::optional<at::Tensor>& logvar,                      \
                                   c10::string_view likelihood, int64_t num_mixtures,            \
                                   int64_t bits, double beta, c10::string_view reduction,        \
                                   std::array<bool, 2> grad_mask);                               \
  std::vector<at::Tensor> elbo_rescale(const at::Tensor& grad, at::TensorList grads);            \
  /* iwae: (bound, weights) of (K, B) log-weights; the DReG gate (z copy, zero token) */         \
  TensorPair iwae_bound(const at::Tensor& log_w, const std::optional<at::Tensor>& gate);         \
  TensorPair dreg_gate(const at::Tensor& z);                                                     \
  }

FASTVAE_DECLARE_KERNELS(cpu)
FASTVAE_DECLARE_KERNELS(cuda)

#undef FASTVAE_DECLARE_KERNELS

}  // namespace fastvae
