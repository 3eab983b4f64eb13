// Autograd for the Bernoulli and Gaussian log-likelihoods. With compute_grad the Bernoulli
// forward kernel already wrote d ll / d logits; backward scales it by the gradient that arrived.
// The Gaussian one computes its gradients in its backward op.
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

class BernoulliLogLikelihood : public torch::autograd::Function<BernoulliLogLikelihood> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& x,
                               bool compute_grad) {
    static const auto op =
        find_op<TensorPair(const at::Tensor&, const at::Tensor&, bool)>("fastvae::bernoulli_log_likelihood");
    auto [ll, dlogits] = call_below_autograd(op, logits, x, compute_grad);
    // d ll / d logits was written by the forward pass; the logits are kept only if x needs a
    // gradient (d ll / d x = logits), which soft targets rarely do.
    ctx->save_for_backward({dlogits, x.requires_grad() ? logits : at::Tensor()});
    ctx->saved_data["x_rows"] = x.sym_size(0);
    // The second output is the saved gradient itself: no gradient flows into it, and autograd
    // must not fill a zero tensor of the data's size for it on every backward pass.
    ctx->mark_non_differentiable({dlogits});
    ctx->set_materialize_grads(false);
    return {ll, dlogits};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_ll = grads[0];
    at::Tensor grad_logits, grad_x;
    if (!grad_ll.defined()) return {grad_logits, grad_x, at::Tensor()};  // nothing flowed in
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &dlogits = saved[0], &logits = saved[1];
    if (ctx->needs_input_grad(0)) {
      TORCH_CHECK(dlogits.sym_numel() != 0,
                  "fastvae::bernoulli_log_likelihood was called with compute_grad=False, so it has no "
                  "gradient for logits");
      // Into a new tensor: dlogits is also the op's second output, which its callers may hold.
      grad_logits = hand_on_precomputed(grad_ll, {dlogits}, /*in_place_ok=*/false)[0];
    }
    if (ctx->needs_input_grad(1)) {
      grad_x = sum_repeats(logits.mul(grad_ll.unsqueeze(1).to(logits.scalar_type())),
                           ctx->saved_data["x_rows"].toSymInt());
    }
    return once_differentiable("fastvae::bernoulli_log_likelihood", {grad_logits, grad_x, at::Tensor()}, grads);
  }
};

class GaussianLogLikelihood : public torch::autograd::Function<GaussianLogLikelihood> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mean, const at::Tensor& x,
                            const at::Tensor& logvar) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "fastvae::gaussian_log_likelihood");
    ctx->save_for_backward({mean, x, logvar});
    ctx->saved_data["x_rows"] = x.sym_size(0);
    ctx->set_materialize_grads(false);
    return call_below_autograd(op, mean, x, logvar);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return variable_list(3);  // nothing flowed into the log-likelihood
    const bool needs_mean = ctx->needs_input_grad(0), needs_x = ctx->needs_input_grad(1);
    const bool needs_logvar = ctx->needs_input_grad(2);
    const auto saved = ctx->get_saved_variables();
    static const auto op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, bool)>("fastvae::gaussian_log_likelihood_backward");
    auto [grad_mean, grad_logvar] = call_below_autograd(op, grad.contiguous(), saved[0], saved[1], saved[2], needs_logvar);
    const at::Tensor grad_x = needs_x ? sum_repeats(grad_mean.neg(), ctx->saved_data["x_rows"].toSymInt()) : at::Tensor();
    return once_differentiable("fastvae::gaussian_log_likelihood",
                               {needs_mean ? grad_mean : at::Tensor(), grad_x,
                                needs_logvar ? grad_logvar : at::Tensor()},
                               grads);
  }
};

namespace {
TensorPair bernoulli_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  auto out = BernoulliLogLikelihood::apply(logits, x, compute_grad);
  return {out[0], out[1]};
}
at::Tensor gaussian_log_likelihood(const at::Tensor& mean, const at::Tensor& x, const at::Tensor& logvar) {
  return GaussianLogLikelihood::apply(mean, x, logvar);
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("bernoulli_log_likelihood", &bernoulli_log_likelihood);
  m.impl("gaussian_log_likelihood", &gaussian_log_likelihood);
}

}  // namespace autograd
}  // namespace fastvae
