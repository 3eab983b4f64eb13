// Autograd for reparameterised sampling. Only mu, logvar and the 2-element Philox state (the
// sampling op's last output) are saved: the backward kernels draw eps again from the state
// instead of storing it.
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

namespace {

using BackwardSig = TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&);

// d/dmu and d/dlogvar from the sample's gradient, plus the KL's when grad_kl is given: one pass.
// A sample drawn without the sample dim (num_samples None) is one sample to the backward op.
TensorPair sampling_backward(const at::Tensor& grad_z, const variable_list& saved,
                             const std::optional<at::Tensor>& grad_kl) {
  static const auto op = find_op<BackwardSig>("fastvae::reparameterize_backward");
  const at::Tensor g = grad_z.dim() == saved[0].dim() ? grad_z.unsqueeze(0) : grad_z;
  return call_below_autograd(op, g.contiguous(), saved[0], saved[1], saved[2], grad_kl);
}

}  // namespace

using SampleSig = TensorPair(const at::Tensor&, const at::Tensor&, std::optional<int64_t>,
                             std::optional<at::Generator>, const std::optional<at::Tensor>&);
using SampleKlSig = TensorTriple(const at::Tensor&, const at::Tensor&, std::optional<int64_t>,
                                 std::optional<at::Generator>, const std::optional<at::Tensor>&);

// Outputs (z, [kl,] rng_state): the state is saved for the backward pass and gets no gradient.
class Reparameterize : public torch::autograd::Function<Reparameterize> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                               std::optional<int64_t> num_samples, std::optional<at::Generator> generator,
                               const std::optional<at::Tensor>& rng_state) {
    static const auto op = find_op<SampleSig>("fastvae::reparameterize");
    auto [z, state] = call_below_autograd(op, mu, logvar, num_samples, std::move(generator), rng_state);
    ctx->save_for_backward({mu, logvar, state});
    ctx->mark_non_differentiable({state});
    ctx->set_materialize_grads(false);
    return {z, state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(5);
    auto [grad_mu, grad_logvar] = sampling_backward(grads[0], ctx->get_saved_variables(), std::nullopt);
    return once_differentiable("fastvae::reparameterize", {grad_mu, grad_logvar, {}, {}, {}}, grads);
  }
};

class ReparameterizeWithKl : public torch::autograd::Function<ReparameterizeWithKl> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                               std::optional<int64_t> num_samples, std::optional<at::Generator> generator,
                               const std::optional<at::Tensor>& rng_state) {
    static const auto op = find_op<SampleKlSig>("fastvae::reparameterize_with_kl");
    auto [z, kl, state] = call_below_autograd(op, mu, logvar, num_samples, std::move(generator), rng_state);
    ctx->save_for_backward({mu, logvar, state});
    ctx->mark_non_differentiable({state});
    // A term nobody used sends no gradient: no zero tensor of z's size is made for it.
    ctx->set_materialize_grads(false);
    return {z, kl, state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor &grad_z = grads[0], &grad_kl = grads[1];
    if (!grad_z.defined() && !grad_kl.defined()) return variable_list(5);
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_mu, grad_logvar;
    if (!grad_z.defined()) {
      // Only the KL was used: its own backward, which draws no eps.
      static const auto kl_op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
          "fastvae::kl_standard_normal_backward");
      std::tie(grad_mu, grad_logvar) = call_below_autograd(kl_op, grad_kl.contiguous(), saved[0], saved[1]);
    } else {
      // Both terms' gradients in one pass over mu and logvar.
      std::tie(grad_mu, grad_logvar) = sampling_backward(
          grad_z, saved, grad_kl.defined() ? std::optional<at::Tensor>(grad_kl.contiguous()) : std::nullopt);
    }
    return once_differentiable("fastvae::reparameterize_with_kl", {grad_mu, grad_logvar, {}, {}, {}}, grads);
  }
};

namespace {
TensorPair reparameterize(const at::Tensor& mu, const at::Tensor& logvar, std::optional<int64_t> num_samples,
                          std::optional<at::Generator> generator, const std::optional<at::Tensor>& rng_state) {
  auto out = Reparameterize::apply(mu, logvar, num_samples, std::move(generator), rng_state);
  return {out[0], out[1]};
}
TensorTriple reparameterize_with_kl(const at::Tensor& mu, const at::Tensor& logvar,
                                    std::optional<int64_t> num_samples,
                                    std::optional<at::Generator> generator,
                                    const std::optional<at::Tensor>& rng_state) {
  auto out = ReparameterizeWithKl::apply(mu, logvar, num_samples, std::move(generator), rng_state);
  return {out[0], out[1], out[2]};
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("reparameterize", &reparameterize);
  m.impl("reparameterize_with_kl", &reparameterize_with_kl);
}

}  // namespace autograd
}  // namespace fastvae
