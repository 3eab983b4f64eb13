// Autograd for the Bernoulli and Gaussian log-likelihoods. With compute_grad the Bernoulli
// forward kernel already wrote d ll / d logits; backward scales it by the gradient that arrived
// (autograd/logits_likelihood.h). The Gaussian one computes its gradients in its backward op.
#include <torch/library.h>

#include "autograd/common.h"
#include "autograd/logits_likelihood.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

class BernoulliLogLikelihood : public LogitsLikelihood<BernoulliLogLikelihood> {
 public:
  static constexpr const char* kName = "fastvae::bernoulli_log_likelihood";
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
at::Tensor gaussian_log_likelihood(const at::Tensor& mean, const at::Tensor& x, const at::Tensor& logvar) {
  return GaussianLogLikelihood::apply(mean, x, logvar);
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("bernoulli_log_likelihood", &BernoulliLogLikelihood::apply_pair);
  m.impl("gaussian_log_likelihood", &gaussian_log_likelihood);
}

}  // namespace autograd
}  // namespace fastvae
