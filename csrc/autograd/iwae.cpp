// Autograd of the importance-weighted bound and of the DReG gate.
//
// fastvae::iwae_bound's forward kernel writes the bound and the normalised weights w; its
// backward is d bound_b / d log_w_kb = w_kb, times the incoming gradient. The weights output is
// not differentiable.
//
// DReG (Tucker et al. 2018) wants the encoder's gradient through z_k weighted by w_k^2 and the
// decoder's by w_k. The gradient reaching z_k through log w_k is already w_k * d log w_k / d z_k
// (times the incoming gradient), so one more factor w_k on z's path gives w_k^2 while the
// decoder's parameters keep w_k. fastvae::dreg_gate sits between the sampler and everything
// that reads z, and returns a zero token next to z; that token enters iwae_bound as `gate`, whose
// backward sends it the weights as its "gradient". Autograd runs the gate's backward only after
// both of its outputs have their gradients, so it finds grad_z and the weights together and
// hands grad_z * w on to the sampler: no mutable state, no device sync, and torch.compile traces
// it as an ordinary graph.
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

using IwaeSig = TensorPair(const at::Tensor&, const std::optional<at::Tensor>&);

class IwaeBound : public torch::autograd::Function<IwaeBound> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& log_w, const std::optional<at::Tensor>& gate) {
    static const auto op = find_op<IwaeSig>("fastvae::iwae_bound");
    auto [bound, weights] = call_below_autograd(op, log_w, gate);
    const bool gated = gate.has_value() && gate->defined();
    ctx->save_for_backward({weights});
    ctx->saved_data["gated"] = gated;
    ctx->mark_non_differentiable({weights});
    ctx->set_materialize_grads(false);
    return {bound, weights};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(2);
    const at::Tensor weights = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grads[0];
    if (grad.defined() && ctx->needs_input_grad(0)) out[0] = weights.mul(grad.unsqueeze(0));
    // The gate token's edge is input 1 when it was given (absent optionals have no edge).
    if (ctx->saved_data["gated"].toBool() && ctx->needs_input_grad(1)) out[1] = weights;
    return once_differentiable("fastvae::iwae_bound", std::move(out), grads);
  }
};

class DregGate : public torch::autograd::Function<DregGate> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z) {
    static const auto op = find_op<TensorPair(const at::Tensor&)>("fastvae::dreg_gate");
    auto [z_out, token] = call_below_autograd(op, z);
    ctx->set_materialize_grads(false);
    return {z_out, token};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_z = grads[0];
    const at::Tensor& weights = grads[1];
    at::Tensor out;
    if (grad_z.defined()) {
      // Without a bound behind the token (nothing flowed into it) the gate is the identity.
      out = weights.defined() ? grad_z.mul(weights.unsqueeze(-1)).to(grad_z.scalar_type()) : grad_z;
    }
    return once_differentiable("fastvae::dreg_gate", {out}, grads);
  }
};

namespace {
TensorPair iwae_bound(const at::Tensor& log_w, const std::optional<at::Tensor>& gate) {
  auto out = IwaeBound::apply(log_w, gate);
  return {out[0], out[1]};
}

TensorPair dreg_gate(const at::Tensor& z) {
  auto out = DregGate::apply(z);
  return {out[0], out[1]};
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("iwae_bound", &iwae_bound);
  m.impl("dreg_gate", &dreg_gate);
}

}  // namespace autograd
}  // namespace fastvae
