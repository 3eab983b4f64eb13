// Autograd of fastvae::linear_bernoulli_log_likelihood: a decoder's last linear layer and the
// Bernoulli likelihood as one node. Forward computes the logits and lets the Bernoulli kernel
// write d ll / d logits over them (fastvae::bernoulli_log_likelihood_), so the logits and their
// gradient never exist side by side, and the node keeps that one buffer (plus the layer's input
// and weight, which a linear layer keeps anyway). Backward scales it by the incoming gradient per
// row, in place on the last pass, and multiplies it out into the layer's three gradients. Peak
// memory: one (N, D) buffer where an eager decoder + likelihood holds two or three.
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

class LinearBernoulli : public torch::autograd::Function<LinearBernoulli> {
 public:
  static constexpr const char* kName = "fastvae::linear_bernoulli_log_likelihood";

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& x) {
    // d ll / d x would need the logits, and their buffer holds their gradient by then.
    TORCH_CHECK(!x.requires_grad(), kName,
                ": x must not require grad (the op keeps no logits to differentiate it with); "
                "use fastvae.functional.bernoulli_log_likelihood on the logits for soft targets that need one");
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("fastvae::bernoulli_log_likelihood_");
    at::Tensor logits;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      logits = bias.sym_numel() != 0 ? at::addmm(bias, input, weight.t()) : at::mm(input, weight.t());
    }
    at::Tensor ll = call_below_autograd(op, logits, x);  // logits now hold d ll / d logits
    ctx->save_for_backward({input, weight, logits});
    ctx->set_materialize_grads(false);
    return ll;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_ll = grads[0];
    at::Tensor grad_input, grad_weight, grad_bias;
    if (!grad_ll.defined()) return {grad_input, grad_weight, grad_bias, at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1];
    // The buffer is the node's own: scaled in place unless the graph is kept or traced.
    const at::Tensor g = hand_on_precomputed(grad_ll, {saved[2]}, /*in_place_ok=*/true)[0];
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      if (ctx->needs_input_grad(0)) grad_input = g.mm(weight);
      if (ctx->needs_input_grad(1)) grad_weight = g.t().mm(input);
      if (ctx->needs_input_grad(2)) grad_bias = g.sum(0);
    }
    return once_differentiable(kName, {grad_input, grad_weight, grad_bias, at::Tensor()}, grads);
  }
};

namespace {
at::Tensor linear_bernoulli_log_likelihood(const at::Tensor& input, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias, const at::Tensor& x) {
  // No bias: an empty tensor in its place (Function::apply records every input's device, which an
  // undefined tensor has none of); it needs no gradient.
  const bool has_bias = bias.has_value() && bias->defined();
  return LinearBernoulli::apply(input, weight, has_bias ? *bias : input.new_empty({0}), x);
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("linear_bernoulli_log_likelihood", &linear_bernoulli_log_likelihood);
}

}  // namespace autograd
}  // namespace fastvae
