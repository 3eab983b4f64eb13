// Autograd for reparameterised sampling. Only mu, logvar and the 2-element Philox state (the
// sampling op's last output) are saved: the backward kernels draw eps again from the state
// instead of storing it.
//
// The node is written by hand, as torch's generated ones are, not with
// torch::autograd::Function: every training step runs it, and at small sizes Function's general
// machinery (per-input and per-output metadata copies, view, dirty and forward-AD handling)
// costs more host time than the kernel itself (issue 17, benchmarks/bench_host.py).
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

using torch::autograd::SavedVariable;

// The backward node of reparameterize (kl_output false: one output, z) and of
// reparameterize_with_kl (outputs z and kl; the state output gets no gradient). Edges: mu, logvar.
struct ReparameterizeNode : torch::autograd::Node {
  ReparameterizeNode(bool kl_output, const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& state)
      : kl_output_(kl_output), mu_(mu, false), logvar_(logvar, false), state_(state, false) {}

  std::string name() const override {
    return kl_output_ ? "fastvae::autograd::ReparameterizeWithKl" : "fastvae::autograd::Reparameterize";
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    mu_.reset_data();
    logvar_.reset_data();
    state_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor& grad_z = grads[0];
    const at::Tensor grad_kl = kl_output_ ? grads[1] : at::Tensor();
    if (!grad_z.defined() && !grad_kl.defined()) return variable_list(2);
    const at::Tensor mu = mu_.unpack(), logvar = logvar_.unpack(), state = state_.unpack();
    at::Tensor grad_mu, grad_logvar;
    if (!grad_z.defined()) {
      // Only the KL was used: its own backward, which draws no eps.
      static const auto kl_op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
          "fastvae::kl_standard_normal_backward");
      std::tie(grad_mu, grad_logvar) = call_below_autograd(kl_op, grad_kl.contiguous(), mu, logvar);
    } else {
      // The sample's gradient, and the KL's when it was used too: one pass over mu and logvar.
      // grad_z has z's shape: (num_samples, *mu.shape), or mu's own for one sample drawn without
      // the sample dim, which the backward op reads as one sample.
      using BackwardSig = TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&);
      static const auto op = find_op<BackwardSig>("fastvae::reparameterize_backward");
      std::tie(grad_mu, grad_logvar) = call_below_autograd(
          op, grad_z.contiguous(), mu, logvar, state,
          grad_kl.defined() ? std::optional<at::Tensor>(grad_kl.contiguous()) : std::nullopt);
    }
    return once_differentiable(kl_output_ ? "fastvae::reparameterize_with_kl" : "fastvae::reparameterize",
                               {grad_mu, grad_logvar}, grads);
  }

 private:
  const bool kl_output_;
  SavedVariable mu_, logvar_, state_;
};

namespace {

using SampleSig = TensorPair(const at::Tensor&, const at::Tensor&, std::optional<int64_t>,
                             std::optional<at::Generator>, const std::optional<at::Tensor>&);
using SampleKlSig = TensorTriple(const at::Tensor&, const at::Tensor&, std::optional<int64_t>,
                                 std::optional<at::Generator>, const std::optional<at::Tensor>&);

// z (and kl) get the node as their history when mu or logvar needs a gradient; the state never.
void attach(bool kl_output, const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& z,
            const at::Tensor& kl, const at::Tensor& state) {
  refuse_functorch();
  if (!torch::autograd::compute_requires_grad(mu, logvar)) return;
  auto node = detail::make_node<ReparameterizeNode>(kl_output, mu, logvar, state);
  node->set_next_edges(torch::autograd::collect_next_edges(mu, logvar));
  torch::autograd::set_history(z, node);
  if (kl_output) torch::autograd::set_history(kl, node);
}

TensorPair reparameterize(const at::Tensor& mu, const at::Tensor& logvar, std::optional<int64_t> num_samples,
                          std::optional<at::Generator> generator, const std::optional<at::Tensor>& rng_state) {
  static const auto op = find_op<SampleSig>("fastvae::reparameterize");
  auto [z, state] = call_below_autograd(op, mu, logvar, num_samples, std::move(generator), rng_state);
  attach(false, mu, logvar, z, at::Tensor(), state);
  return {z, state};
}

TensorTriple reparameterize_with_kl(const at::Tensor& mu, const at::Tensor& logvar,
                                    std::optional<int64_t> num_samples, std::optional<at::Generator> generator,
                                    const std::optional<at::Tensor>& rng_state) {
  static const auto op = find_op<SampleKlSig>("fastvae::reparameterize_with_kl");
  auto [z, kl, state] = call_below_autograd(op, mu, logvar, num_samples, std::move(generator), rng_state);
  attach(true, mu, logvar, z, kl, state);
  return {z, kl, state};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("reparameterize", &reparameterize);
  m.impl("reparameterize_with_kl", &reparameterize_with_kl);
}

}  // namespace autograd
}  // namespace fastvae
