// Autograd for the Bernoulli and Gaussian log-likelihoods. With compute_grad the forward kernels
// already wrote the input gradients times grad_scale (the gradient the caller's loss sends back
// per row, e.g. -1/B for a mean); backward rescales them to the gradient that actually arrived.
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

class BernoulliLogLikelihood : public torch::autograd::Function<BernoulliLogLikelihood> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& x,
                               bool compute_grad, double grad_scale) {
    static const auto op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, bool, double)>(
        "fastvae::bernoulli_log_likelihood");
    auto [ll, dlogits] = call_below_autograd(op, logits, x, compute_grad, grad_scale);
    // d ll / d logits was written by the forward pass; the logits are kept only if x needs a
    // gradient (d ll / d x = logits), which soft targets rarely do.
    ctx->save_for_backward({dlogits, x.requires_grad() ? logits : at::Tensor()});
    ctx->saved_data["x_rows"] = x.sym_size(0);
    ctx->saved_data["grad_scale"] = grad_scale;
    // The second output is the saved gradient itself: no gradient flows into it, and autograd
    // must not fill a zero tensor of the data's size for it on every backward pass.
    ctx->mark_non_differentiable({dlogits});
    ctx->set_materialize_grads(false);
    return {ll, dlogits};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_ll = grads[0];
    at::Tensor grad_logits, grad_x;
    if (!grad_ll.defined()) return {grad_logits, grad_x, at::Tensor(), at::Tensor()};  // nothing flowed in
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &dlogits = saved[0], &logits = saved[1];
    if (ctx->needs_input_grad(0)) {
      TORCH_CHECK(dlogits.sym_numel() != 0,
                  "fastvae::bernoulli_log_likelihood was called with compute_grad=False, so it has no "
                  "gradient for logits");
      // Into a new tensor: dlogits is also the op's second output, which its callers may hold.
      grad_logits = hand_on_precomputed(grad_ll, {dlogits}, /*in_place_ok=*/false,
                                        ctx->saved_data["grad_scale"].toDouble())[0];
    }
    if (ctx->needs_input_grad(1)) {
      grad_x = sum_repeats(logits.mul(grad_ll.unsqueeze(1).to(logits.scalar_type())),
                           ctx->saved_data["x_rows"].toSymInt());
    }
    return once_differentiable("fastvae::bernoulli_log_likelihood", {grad_logits, grad_x, at::Tensor(), at::Tensor()},
                               grads);
  }
};

class GaussianLogLikelihood : public torch::autograd::Function<GaussianLogLikelihood> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mean, const at::Tensor& x,
                               const at::Tensor& logvar, bool compute_grad, double grad_scale) {
    static const auto op =
        find_op<TensorTriple(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double)>(
            "fastvae::gaussian_log_likelihood");
    auto [ll, grad_mean, grad_logvar] = call_below_autograd(op, mean, x, logvar, compute_grad, grad_scale);
    // With compute_grad the forward pass wrote the mean's gradient and a per-element variance's;
    // the inputs are kept only for what those do not cover (then the backward op computes it).
    const bool needs_inputs = !compute_grad || (logvar.requires_grad() && grad_logvar.sym_numel() == 0);
    if (needs_inputs) {
      ctx->save_for_backward({grad_mean, grad_logvar, mean, x, logvar});
    } else {
      ctx->save_for_backward({grad_mean, grad_logvar});
    }
    ctx->saved_data["precomputed"] = compute_grad;
    ctx->saved_data["x_rows"] = x.sym_size(0);
    ctx->saved_data["grad_scale"] = grad_scale;
    ctx->mark_non_differentiable({grad_mean, grad_logvar});
    ctx->set_materialize_grads(false);
    return {ll, grad_mean, grad_logvar};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return variable_list(5);  // nothing flowed into the log-likelihood
    const bool needs_mean = ctx->needs_input_grad(0), needs_x = ctx->needs_input_grad(1);
    const bool needs_logvar = ctx->needs_input_grad(2);
    const bool precomputed = ctx->saved_data["precomputed"].toBool();
    const double grad_scale = ctx->saved_data["grad_scale"].toDouble();
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_mean, grad_logvar;
    if (precomputed) {
      // The written gradients through one elbo_rescale call (one division, one launch on a GPU),
      // into new tensors: the saved ones are also the op's outputs, which its callers may hold.
      // An empty one (not written) is handed on as it is.
      if (needs_mean || needs_x) grad_mean = saved[0];
      if (needs_logvar) grad_logvar = saved[1];
      std::vector<at::Tensor*> written;
      std::vector<at::Tensor> pre;
      for (at::Tensor* t : {&grad_mean, &grad_logvar}) {
        if (t->defined() && t->sym_numel() != 0) {
          written.push_back(t);
          pre.push_back(*t);
        }
      }
      const auto scaled = hand_on_precomputed(grad, std::move(pre), /*in_place_ok=*/false, grad_scale);
      for (size_t i = 0; i < written.size(); ++i) *written[i] = scaled[i];
    }
    // No precomputed gradients, or a broadcast variance's still to be summed over rows.
    if (saved.size() > 2 && (!precomputed || needs_logvar)) {
      static const auto op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, bool)>("fastvae::gaussian_log_likelihood_backward");
      auto [recomputed_mean, recomputed_logvar] =
          call_below_autograd(op, grad.contiguous(), saved[2], saved[3], saved[4], needs_logvar);
      if (!precomputed) grad_mean = recomputed_mean;
      grad_logvar = recomputed_logvar;
    }
    const at::Tensor grad_x = needs_x ? sum_repeats(grad_mean.neg(), ctx->saved_data["x_rows"].toSymInt()) : at::Tensor();
    return once_differentiable("fastvae::gaussian_log_likelihood",
                               {needs_mean ? grad_mean : at::Tensor(), grad_x,
                                needs_logvar ? grad_logvar : at::Tensor(), at::Tensor(), at::Tensor()},
                               grads);
  }
};

namespace {
TensorPair bernoulli_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad,
                                    double grad_scale) {
  auto out = BernoulliLogLikelihood::apply(logits, x, compute_grad, grad_scale);
  return {out[0], out[1]};
}
TensorTriple gaussian_log_likelihood(const at::Tensor& mean, const at::Tensor& x, const at::Tensor& logvar,
                                     bool compute_grad, double grad_scale) {
  auto out = GaussianLogLikelihood::apply(mean, x, logvar, compute_grad, grad_scale);
  return {out[0], out[1], out[2]};
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("bernoulli_log_likelihood", &bernoulli_log_likelihood);
  m.impl("gaussian_log_likelihood", &gaussian_log_likelihood);
}

}  // namespace autograd
}  // namespace fastvae
