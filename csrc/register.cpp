// The one place that declares every fastvae op to the PyTorch dispatcher and binds the CPU (and,
// when built, CUDA) kernels to it. Autograd kernels are registered by csrc/autograd/*.cpp; fake
// tensors from Python (fastvae/ops.py), next to the Python wrappers.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>
#ifndef FASTVAE_NO_PYTHON
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>  // not torch/extension.h: the module binds no tensors, and that header doubles the compile

#include <algorithm>
#include <vector>
#endif

#include "ops.h"

// fastvae._C_emu (FASTVAE_EMU, see csrc/emu/) compiles this file again: the same schemas in the
// namespace fastvae_emu, bound under the CPU key to the CUDA kernels run by the SIMT emulator.
#ifdef FASTVAE_EMU
#define FASTVAE_NAMESPACE fastvae_emu
#else
#define FASTVAE_NAMESPACE fastvae
#endif
// Expands FASTVAE_NAMESPACE before TORCH_LIBRARY pastes it into names.
#define FASTVAE_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define FASTVAE_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

// Bumped whenever a schema or the module's attributes change, so that fastvae/_extension.py can
// refuse a stale build (7: cpu_isa, parallel_threads; 8: the sampling ops' Philox counter in
// curand's layout, a new eps for a given seed; 9: the likelihoods without grad_scale, and the
// Gaussian one without compute_grad and its gradient outputs; 10: num_samples optional in the
// samplers, and fastvae::elbo; 11: the kl_normal family; 12: fastvae::iwae_bound and fastvae::dreg_gate;
// 13: the image likelihoods: fastvae::continuous_bernoulli_log_likelihood,
// fastvae::categorical_log_likelihood and the discretized_logistic family; 15: the samplers
// fastvae::sample_discretized_mix_logistic, fastvae::sample_discretized_logistic and
// fastvae::sample_categorical; 16: the image_elbo family; 17: fastvae::bernoulli_log_likelihood_ and
// fastvae::linear_bernoulli_log_likelihood).
#define FASTVAE_OPS_VERSION 17

FASTVAE_LIBRARY(FASTVAE_NAMESPACE, m) {
  // The sampling ops draw their Philox (seed, offset) from the generator themselves (or take a
  // given rng_state) and return it as their last output, for the backward op to draw eps again.
  // z is (num_samples, *mu.shape); num_samples None draws one sample shaped like mu (no sample
  // dim, so the caller needs no squeeze: no view node in the graph of a training step).
  m.def("reparameterize(Tensor mu, Tensor logvar, int? num_samples, Generator? generator=None, "
        "Tensor? rng_state=None) -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  m.def("reparameterize_with_kl(Tensor mu, Tensor logvar, int? num_samples, Generator? generator=None, "
        "Tensor? rng_state=None) -> (Tensor, Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  m.def("reparameterize_backward(Tensor grad_z, Tensor mu, Tensor logvar, Tensor rng_state, Tensor? grad_kl=None) -> (Tensor, Tensor)");
  m.def("kl_standard_normal(Tensor mu, Tensor logvar) -> Tensor");
  m.def("kl_standard_normal_backward(Tensor grad, Tensor mu, Tensor logvar) -> (Tensor, Tensor)");
  // KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) per row: the prior's operands each broadcast
  // over q's rows (their row count divides q's); the backward op returns all four gradients, a
  // broadcast operand's summed over its repeats. The sampler draws z as reparameterize does, and
  // the KL against the prior in the same pass; its backward takes both terms' gradients in one.
  m.def("kl_normal(Tensor mu_q, Tensor logvar_q, Tensor mu_p, Tensor logvar_p) -> Tensor");
  m.def("kl_normal_backward(Tensor grad, Tensor mu_q, Tensor logvar_q, Tensor mu_p, Tensor logvar_p) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("reparameterize_with_kl_normal(Tensor mu, Tensor logvar, Tensor prior_mu, Tensor prior_logvar, "
        "int? num_samples, Generator? generator=None, Tensor? rng_state=None) -> (Tensor, Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  m.def("reparameterize_with_kl_normal_backward(Tensor grad_z, Tensor mu, Tensor logvar, Tensor prior_mu, "
        "Tensor prior_logvar, Tensor rng_state, Tensor grad_kl) -> (Tensor, Tensor, Tensor, Tensor)");
  // With compute_grad the Bernoulli likelihood also returns d ll / d logits, written in the same pass.
  m.def("bernoulli_log_likelihood(Tensor logits, Tensor x, bool compute_grad) -> (Tensor, Tensor)");
  m.def("gaussian_log_likelihood(Tensor mean, Tensor x, Tensor logvar) -> Tensor");
  // The same per row, d ll / d logits written over the (contiguous) logits: the buffer of the
  // fused decoder head below, which nothing else reads.
  m.def("bernoulli_log_likelihood_(Tensor(a!) logits, Tensor x) -> Tensor");
  // A decoder's last linear layer and the Bernoulli likelihood in one op: log p(x | logits) per
  // row of input (N, H), logits = input @ weight.T + bias never kept (their buffer becomes their
  // gradient), x (B, D) broadcast over the rows (row r reads x row r % B).
  m.def("linear_bernoulli_log_likelihood(Tensor input, Tensor weight, Tensor? bias, Tensor x) -> Tensor");
  // The continuous Bernoulli (x in [0, 1]) as the Bernoulli above: rows of logits, x broadcast
  // over them, d ll / d logits written in the same pass with compute_grad.
  m.def("continuous_bernoulli_log_likelihood(Tensor logits, Tensor x, bool compute_grad) -> (Tensor, Tensor)");
  // logits (B, K, C, P) of any strides, x (B, C * P) integer levels: per-image sums of log softmax
  // at x, and with compute_grad onehot(x) - softmax (strided like logits) from the same pass.
  m.def("categorical_log_likelihood(Tensor logits, Tensor x, bool compute_grad) -> (Tensor, Tensor)");
  m.def("gaussian_log_likelihood_backward(Tensor grad, Tensor mean, Tensor x, Tensor logvar, bool logvar_grad) -> (Tensor, Tensor)");
  // Discretized logistic likelihoods of 2^bits-level data (B,): the NVAE / PixelCNN++ mixture of
  // params (B, 10 M or 3 M, S) and one logistic of mean / log_scale (B, C, S), against x (B, C, S)
  // (levels, or float values in [-1, 1]); with compute_grad the parameters' gradients for an
  // incoming gradient of 1 too (else empty outputs).
  m.def("discretized_mix_logistic_log_likelihood_with_grad(Tensor params, Tensor x, int num_mixtures, int bits, "
        "bool compute_grad) -> (Tensor, Tensor)");
  m.def("discretized_logistic_log_likelihood_with_grad(Tensor mean, Tensor log_scale, Tensor x, int bits, "
        "bool compute_grad) -> (Tensor, Tensor, Tensor)");
#ifndef FASTVAE_EMU
  // The log-likelihoods alone, for fastvae.functional: their autograd kernels decide which
  // gradients the forward pass writes (and scale them in place in backward: they never leave it).
  m.def("discretized_mix_logistic_log_likelihood(Tensor params, Tensor x, int num_mixtures, int bits) -> Tensor");
  m.def("discretized_logistic_log_likelihood(Tensor mean, Tensor log_scale, Tensor x, int bits) -> Tensor");
#endif
  // The discrete likelihoods' samplers: integer levels (uint8 for up to 256 levels, else int32)
  // from the Philox stream of the Gaussian sampler (a fresh (seed, offset) from the generator, or
  // the given rng_state): the mixture's (B, C, S) of params (B, 10 M or 3 M, S), one logistic's
  // (B, C, S) of mean / log_scale (B, C, S), the categorical's (B, C * P) of logits (B, K, C, P).
  m.def("sample_discretized_mix_logistic(Tensor params, int num_mixtures, int bits, Generator? generator=None, "
        "Tensor? rng_state=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  m.def("sample_discretized_logistic(Tensor mean, Tensor log_scale, int bits, Generator? generator=None, "
        "Tensor? rng_state=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  m.def("sample_categorical(Tensor logits, Generator? generator=None, Tensor? rng_state=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  m.def("gaussian_log_density(Tensor z, Tensor mu, Tensor logvar) -> Tensor");
  m.def("gaussian_log_density_backward(Tensor grad, Tensor z, Tensor mu, Tensor logvar) -> (Tensor, Tensor, Tensor)");
  m.def("standard_normal_log_density(Tensor z) -> Tensor");
  m.def("standard_normal_log_density_backward(Tensor grad, Tensor z) -> Tensor");
  // The whole reduced negative ELBO (csrc/cpu/elbo.cpp): the loss plus, per grad_mask entry
  // (recon, kl or mu/logvar, obs_logvar), the input gradients for an incoming gradient of 1.
  m.def("elbo_loss(Tensor recon, Tensor x, Tensor? kl, Tensor? mu, Tensor? logvar, Tensor? obs_logvar, "
        "float obs_logvar_value, str likelihood, float beta, str reduction, bool[3] grad_mask) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradients pre-computed for an incoming gradient of 1, times the one that came (a scalar or
  // one per row): in place (rows whose factor is 1 untouched), or into new tensors.
#ifndef FASTVAE_EMU
  // The loss of elbo_loss alone, for fastvae.functional.elbo: its autograd kernel decides which
  // gradients the forward pass writes; without autograd (inference mode) it writes none.
  m.def("elbo(Tensor recon, Tensor x, Tensor? kl, Tensor? mu, Tensor? logvar, Tensor? obs_logvar, "
        "float obs_logvar_value, str likelihood, float beta, str reduction) -> Tensor");
#endif
  // The whole negative ELBO of an image VAE (csrc/common/image_elbo.h): the loss plus, per
  // grad_mask entry (recon, kl or mu/logvar), the input gradients for an incoming gradient of 1.
  m.def("image_elbo_loss(Tensor recon, Tensor x, Tensor? kl, Tensor? mu, Tensor? logvar, str likelihood, "
        "int num_mixtures, int bits, float beta, str reduction, bool[2] grad_mask) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
#ifndef FASTVAE_EMU
  // Its loss alone, for fastvae.functional.image_elbo (its autograd kernel picks the gradients).
  m.def("image_elbo(Tensor recon, Tensor x, Tensor? kl, Tensor? mu, Tensor? logvar, str likelihood, "
        "int num_mixtures, int bits, float beta, str reduction) -> Tensor");
#endif
  m.def("elbo_rescale_(Tensor grad, Tensor(a!)[] grads) -> ()");
  m.def("elbo_rescale(Tensor grad, Tensor[] grads) -> Tensor[]");
  // The importance-weighted bound of (K, B) log-weights: (bound (B,) = logsumexp over K - log K,
  // normalised weights (K, B)), both in the accumulation dtype. Backward: d bound / d log_w =
  // the weights; a gate token (from dreg_gate) receives the weights as its gradient, so that the
  // gate scales the gradient of z by them (DReG's squared weights on the encoder's path).
  m.def("iwae_bound(Tensor log_w, Tensor? gate=None) -> (Tensor, Tensor)");
  // z (..., Z) unchanged and a zero token (...,); backward: grad_z times the token's gradient.
  m.def("dreg_gate(Tensor z) -> (Tensor, Tensor)");
}

namespace fastvae {
namespace {

// A backend's sampling kernel (num_samples >= 1 draws, z of shape (K, *mu.shape)) behind the
// schema's optional num_samples: None is one draw with z shaped like mu.
template <typename Ret, Ret (*kernel)(const at::Tensor&, const at::Tensor&, int64_t, std::optional<at::Generator>,
                                      const std::optional<at::Tensor>&)>
Ret sampler(const at::Tensor& mu, const at::Tensor& logvar, std::optional<int64_t> num_samples,
            std::optional<at::Generator> generator, const std::optional<at::Tensor>& rng_state) {
  Ret out = kernel(mu, logvar, num_samples.value_or(1), std::move(generator), rng_state);
  if (!num_samples.has_value()) std::get<0>(out) = std::get<0>(out).view(mu.sizes());
  return out;
}

#ifndef FASTVAE_EMU
// fastvae::elbo below autograd (every backend): elbo_loss with no gradient written, its loss.
at::Tensor elbo_loss_only(const at::Tensor& recon, const at::Tensor& x, const std::optional<at::Tensor>& kl,
                          const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                          const std::optional<at::Tensor>& obs_logvar, double obs_logvar_value,
                          c10::string_view likelihood, double beta, c10::string_view reduction) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastvae::elbo_loss", "").typed<ElboOutputs(
      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double, c10::string_view, double,
      c10::string_view, std::array<bool, 3>)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // already below it: stay there
  return std::get<0>(op.call(recon, x, kl, mu, logvar, obs_logvar, obs_logvar_value, likelihood, beta, reduction,
                             std::array<bool, 3>{false, false, false}));
}

// fastvae::image_elbo below autograd (every backend): image_elbo_loss with no gradient written.
at::Tensor image_elbo_only(const at::Tensor& recon, const at::Tensor& x, const std::optional<at::Tensor>& kl,
                           const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                           c10::string_view likelihood, int64_t num_mixtures, int64_t bits, double beta,
                           c10::string_view reduction) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastvae::image_elbo_loss", "").typed<
      ImageElboOutputs(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                       const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, c10::string_view, int64_t,
                       int64_t, double, c10::string_view, std::array<bool, 2>)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return std::get<0>(op.call(recon, x, kl, mu, logvar, likelihood, num_mixtures, bits, beta, reduction,
                             std::array<bool, 2>{false, false}));
}

// fastvae::discretized_*_log_likelihood below autograd (every backend): the _with_grad op with no
// gradient written, its log-likelihood.
at::Tensor dmol_ll_only(const at::Tensor& params, const at::Tensor& x, int64_t num_mixtures, int64_t bits) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastvae::discretized_mix_logistic_log_likelihood_with_grad", "")
                             .typed<TensorPair(const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return std::get<0>(op.call(params, x, num_mixtures, bits, false));
}

// fastvae::linear_bernoulli_log_likelihood below autograd (every backend): the logits, then the
// Bernoulli likelihood with no gradient written.
at::Tensor linear_bernoulli_only(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& x) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastvae::bernoulli_log_likelihood", "")
                             .typed<TensorPair(const at::Tensor&, const at::Tensor&, bool)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto logits = bias.has_value() && bias->defined() ? at::addmm(*bias, input, weight.t())
                                                          : at::mm(input, weight.t());
  return std::get<0>(op.call(logits, x, false));
}

at::Tensor logistic_ll_only(const at::Tensor& mean, const at::Tensor& log_scale, const at::Tensor& x, int64_t bits) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastvae::discretized_logistic_log_likelihood_with_grad", "")
          .typed<TensorTriple(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return std::get<0>(op.call(mean, log_scale, x, bits, false));
}
#endif

}  // namespace
}  // namespace fastvae

#define FASTVAE_IMPL_ALL(ns)                                                                   \
  m.impl("reparameterize", &fastvae::sampler<fastvae::TensorPair, &fastvae::ns::reparameterize>);       \
  m.impl("reparameterize_with_kl", &fastvae::sampler<fastvae::TensorTriple, &fastvae::ns::reparameterize_with_kl>); \
  m.impl("reparameterize_backward", &fastvae::ns::reparameterize_backward);                    \
  m.impl("kl_standard_normal", &fastvae::ns::kl_standard_normal);                              \
  m.impl("kl_standard_normal_backward", &fastvae::ns::kl_standard_normal_backward);            \
  m.impl("kl_normal", &fastvae::ns::kl_normal);                                                \
  m.impl("kl_normal_backward", &fastvae::ns::kl_normal_backward);                              \
  m.impl("reparameterize_with_kl_normal", &fastvae::ns::reparameterize_with_kl_normal);        \
  m.impl("reparameterize_with_kl_normal_backward", &fastvae::ns::reparameterize_with_kl_normal_backward); \
  m.impl("bernoulli_log_likelihood", &fastvae::ns::bernoulli_log_likelihood);                  \
  m.impl("bernoulli_log_likelihood_", &fastvae::ns::bernoulli_log_likelihood_);                \
  m.impl("gaussian_log_likelihood", &fastvae::ns::gaussian_log_likelihood);                    \
  m.impl("continuous_bernoulli_log_likelihood", &fastvae::ns::continuous_bernoulli_log_likelihood); \
  m.impl("categorical_log_likelihood", &fastvae::ns::categorical_log_likelihood);              \
  m.impl("gaussian_log_likelihood_backward", &fastvae::ns::gaussian_log_likelihood_backward);  \
  m.impl("discretized_mix_logistic_log_likelihood_with_grad",                                 \
         &fastvae::ns::discretized_mix_logistic_log_likelihood_with_grad);                      \
  m.impl("discretized_logistic_log_likelihood_with_grad",                                     \
         &fastvae::ns::discretized_logistic_log_likelihood_with_grad);                          \
  m.impl("sample_discretized_mix_logistic", &fastvae::ns::sample_discretized_mix_logistic);    \
  m.impl("sample_discretized_logistic", &fastvae::ns::sample_discretized_logistic);            \
  m.impl("sample_categorical", &fastvae::ns::sample_categorical);                              \
  m.impl("gaussian_log_density", &fastvae::ns::gaussian_log_density);                          \
  m.impl("gaussian_log_density_backward", &fastvae::ns::gaussian_log_density_backward);        \
  m.impl("standard_normal_log_density", &fastvae::ns::standard_normal_log_density);            \
  m.impl("standard_normal_log_density_backward", &fastvae::ns::standard_normal_log_density_backward); \
  m.impl("elbo_loss", &fastvae::ns::elbo_loss);                                                \
  m.impl("elbo_rescale_", &fastvae::ns::elbo_rescale_);                                        \
  m.impl("image_elbo_loss", &fastvae::ns::image_elbo_loss);                                    \
  m.impl("elbo_rescale", &fastvae::ns::elbo_rescale);                                          \
  m.impl("iwae_bound", &fastvae::ns::iwae_bound);                                              \
  m.impl("dreg_gate", &fastvae::ns::dreg_gate);

#ifdef FASTVAE_EMU
FASTVAE_LIBRARY_IMPL(FASTVAE_NAMESPACE, CPU, m) { FASTVAE_IMPL_ALL(cuda) }
#else
TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  FASTVAE_IMPL_ALL(cpu)
  m.impl("elbo", &fastvae::elbo_loss_only);
  m.impl("discretized_mix_logistic_log_likelihood", &fastvae::dmol_ll_only);
  m.impl("discretized_logistic_log_likelihood", &fastvae::logistic_ll_only);
  m.impl("image_elbo", &fastvae::image_elbo_only);
  m.impl("linear_bernoulli_log_likelihood", &fastvae::linear_bernoulli_only);
}
#endif

#if defined(FASTVAE_WITH_CUDA) && !defined(FASTVAE_EMU)
TORCH_LIBRARY_IMPL(fastvae, CUDA, m) {
  FASTVAE_IMPL_ALL(cuda)
  m.impl("elbo", &fastvae::elbo_loss_only);
  m.impl("discretized_mix_logistic_log_likelihood", &fastvae::dmol_ll_only);
  m.impl("discretized_logistic_log_likelihood", &fastvae::logistic_ll_only);
  m.impl("image_elbo", &fastvae::image_elbo_only);
  m.impl("linear_bernoulli_log_likelihood", &fastvae::linear_bernoulli_only);
}
#endif

#ifndef FASTVAE_NO_PYTHON
// How many threads at::parallel_for hands `tasks` single-item tasks to, as compiled into this
// extension (the CPU kernels' loops are that same header template). 1 whatever
// torch.get_num_threads() says means the kernels were built without the intra-op backend.
static int64_t parallel_threads(int64_t tasks) {
  std::vector<char> seen(static_cast<size_t>(std::max<int64_t>(at::get_num_threads(), 1)), 0);
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    const int tid = at::get_thread_num();
    if (tid >= 0 && static_cast<size_t>(tid) < seen.size()) seen[tid] = 1;
  });
  return std::count(seen.begin(), seen.end(), 1);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastvae compiled kernels; the ops live in torch.ops.fastvae";
  m.attr("ops_version") = FASTVAE_OPS_VERSION;
  // The vector ISA the CPU kernels were compiled for (setup.py FASTVAE_CPU_ISA).
#if defined(CPU_CAPABILITY_AVX512)
  m.attr("cpu_isa") = "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  m.attr("cpu_isa") = "avx2";
#else
  m.attr("cpu_isa") = "generic";
#endif
  m.def("parallel_threads", &parallel_threads, "threads at::parallel_for uses for `tasks` tasks",
        pybind11::arg("tasks"));
#if defined(FASTVAE_WITH_CUDA) || defined(FASTVAE_EMU)
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
}
#endif
