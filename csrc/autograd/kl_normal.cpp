// Autograd for the KL between two diagonal Gaussians, alone and fused with the sample of q. The
// sampler saves mu, logvar, the prior's two operands and its 2-element Philox state: the backward
// pass draws eps again. Gradients go to all four operands (a broadcast prior's summed back by the
// backward kernels).
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

namespace {

using Quad = TensorQuad(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&);

// The KL's four gradients for its incoming gradient grad (one per row), no sample involved.
TensorQuad kl_backward(const at::Tensor& grad, const variable_list& saved) {
  static const auto op = find_op<Quad>("fastvae::kl_normal_backward");
  return call_below_autograd(op, grad.contiguous(), saved[0], saved[1], saved[2], saved[3]);
}

variable_list as_list(const TensorQuad& g) { return {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g)}; }

}  // namespace

class KlNormal : public torch::autograd::Function<KlNormal> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu_q, const at::Tensor& logvar_q,
                            const at::Tensor& mu_p, const at::Tensor& logvar_p) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&)>("fastvae::kl_normal");
    ctx->save_for_backward({mu_q, logvar_q, mu_p, logvar_p});
    return call_below_autograd(op, mu_q, logvar_q, mu_p, logvar_p);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return once_differentiable("fastvae::kl_normal", as_list(kl_backward(grads[0], ctx->get_saved_variables())),
                               grads);
  }
};

using SampleSig = TensorTriple(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               std::optional<int64_t>, std::optional<at::Generator>,
                               const std::optional<at::Tensor>&);

// Outputs (z, kl, rng_state): the state is saved for the backward pass and gets no gradient.
class ReparameterizeWithKlNormal : public torch::autograd::Function<ReparameterizeWithKlNormal> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                               const at::Tensor& prior_mu, const at::Tensor& prior_logvar,
                               std::optional<int64_t> num_samples, std::optional<at::Generator> generator,
                               const std::optional<at::Tensor>& rng_state) {
    static const auto op = find_op<SampleSig>("fastvae::reparameterize_with_kl_normal");
    auto [z, kl, state] =
        call_below_autograd(op, mu, logvar, prior_mu, prior_logvar, num_samples, std::move(generator), rng_state);
    ctx->save_for_backward({mu, logvar, prior_mu, prior_logvar, state});
    ctx->mark_non_differentiable({state});
    ctx->set_materialize_grads(false);  // a term nobody used sends no gradient
    return {z, kl, state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor &grad_z = grads[0], &grad_kl = grads[1];
    variable_list out(7);
    if (!grad_z.defined() && !grad_kl.defined()) return out;
    const auto saved = ctx->get_saved_variables();
    // grad_z as it comes: a sample drawn without the sample dim (num_samples None) has mu's shape,
    // which the backward ops read as one sample (no view per step).
    const at::Tensor& g = grad_z;
    if (!grad_z.defined()) {
      // Only the KL was used: its own backward, which draws no eps.
      const auto q = as_list(kl_backward(grad_kl, saved));
      std::copy(q.begin(), q.end(), out.begin());
    } else if (!grad_kl.defined()) {
      // Only the sample: the sampler's backward; the prior gets no gradient.
      static const auto op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const std::optional<at::Tensor>&)>(
          "fastvae::reparameterize_backward");
      std::tie(out[0], out[1]) = call_below_autograd(op, g.contiguous(), saved[0], saved[1], saved[4], std::nullopt);
    } else {
      // Both terms' gradients, the prior's included, in one pass.
      static const auto op = find_op<TensorQuad(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&)>("fastvae::reparameterize_with_kl_normal_backward");
      const auto q = as_list(call_below_autograd(op, g.contiguous(), saved[0], saved[1], saved[2], saved[3], saved[4],
                                                 grad_kl.contiguous()));
      std::copy(q.begin(), q.end(), out.begin());
    }
    return once_differentiable("fastvae::reparameterize_with_kl_normal", out, grads);
  }
};

namespace {
at::Tensor kl_normal(const at::Tensor& mu_q, const at::Tensor& logvar_q, const at::Tensor& mu_p,
                     const at::Tensor& logvar_p) {
  return KlNormal::apply(mu_q, logvar_q, mu_p, logvar_p);
}
TensorTriple reparameterize_with_kl_normal(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& prior_mu,
                                           const at::Tensor& prior_logvar, std::optional<int64_t> num_samples,
                                           std::optional<at::Generator> generator,
                                           const std::optional<at::Tensor>& rng_state) {
  auto out = ReparameterizeWithKlNormal::apply(mu, logvar, prior_mu, prior_logvar, num_samples, std::move(generator),
                                               rng_state);
  return {out[0], out[1], out[2]};
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("kl_normal", &kl_normal);
  m.impl("reparameterize_with_kl_normal", &reparameterize_with_kl_normal);
}

}  // namespace autograd
}  // namespace fastvae
