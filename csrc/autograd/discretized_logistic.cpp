// Autograd for the discretized logistic likelihoods. The forward kernels write the parameters'
// gradients for an incoming gradient of 1 (compute_grad); backward scales them per row by the
// gradient that arrived. x (data) gets no gradient. The samplers return integer levels, which
// have no gradient: autograd's not-implemented kernel passes them through below autograd.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

// kGradOutputs: the _with_grad ops, whose gradient outputs their callers may hold (backward
// scales a copy); otherwise the log-likelihood ops of fastvae.functional, whose gradient buffers
// never leave the autograd node (backward scales them in place, and not at all for a gradient of 1).
template <typename Derived, bool kGradOutputs>
class MixLogisticFunction : public torch::autograd::Function<Derived> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& params, const at::Tensor& x,
                               int64_t num_mixtures, int64_t bits, bool compute_grad) {
    static const auto op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool)>(
        "fastvae::discretized_mix_logistic_log_likelihood_with_grad");
    auto [ll, dparams] = call_below_autograd(op, params, x, num_mixtures, bits, compute_grad);
    ctx->save_for_backward({dparams});
    ctx->set_materialize_grads(false);
    if constexpr (!kGradOutputs) {
      return {ll};
    } else {
      ctx->mark_non_differentiable({dparams});  // the saved gradient itself: nothing flows into it
      return {ll, dparams};
    }
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_ll = grads[0];
    at::Tensor grad_params;
    if (grad_ll.defined() && ctx->needs_input_grad(0)) {
      const at::Tensor dparams = ctx->get_saved_variables()[0];
      TORCH_CHECK(dparams.sym_numel() != 0,
                  "fastvae::discretized_mix_logistic_log_likelihood_with_grad was called with compute_grad=False, "
                  "so it has no gradient for params");
      grad_params = hand_on_rows(grad_ll, {dparams}, !kGradOutputs)[0];
    }
    return once_differentiable("fastvae::discretized_mix_logistic_log_likelihood",
                               {grad_params, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()}, grads);
  }
};

template <typename Derived, bool kGradOutputs>
class LogisticFunction : public torch::autograd::Function<Derived> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mean, const at::Tensor& log_scale,
                               const at::Tensor& x, int64_t bits, bool compute_grad) {
    static const auto op =
        find_op<TensorTriple(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool)>(
            "fastvae::discretized_logistic_log_likelihood_with_grad");
    auto [ll, dmean, dls] = call_below_autograd(op, mean, log_scale, x, bits, compute_grad);
    ctx->save_for_backward({dmean, dls});
    ctx->set_materialize_grads(false);
    if constexpr (!kGradOutputs) {
      return {ll};
    } else {
      ctx->mark_non_differentiable({dmean, dls});
      return {ll, dmean, dls};
    }
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_ll = grads[0];
    at::Tensor grad_mean, grad_ls;
    const bool want_mean = ctx->needs_input_grad(0), want_ls = ctx->needs_input_grad(1);
    if (grad_ll.defined() && (want_mean || want_ls)) {
      const auto saved = ctx->get_saved_variables();
      TORCH_CHECK(saved[0].sym_numel() != 0,
                  "fastvae::discretized_logistic_log_likelihood_with_grad was called with compute_grad=False, so "
                  "it has no gradient for mean and log_scale");
      variable_list wanted;
      if (want_mean) wanted.push_back(saved[0]);
      if (want_ls) wanted.push_back(saved[1]);
      auto out = hand_on_rows(grad_ll, wanted, !kGradOutputs);
      if (want_mean) grad_mean = out[0];
      if (want_ls) grad_ls = out[want_mean ? 1 : 0];
    }
    return once_differentiable("fastvae::discretized_logistic_log_likelihood",
                               {grad_mean, grad_ls, at::Tensor(), at::Tensor(), at::Tensor()}, grads);
  }
};

// Node names: CppNode<fastvae::autograd::DiscretizedMixLogistic> in a training step's graph.
class DiscretizedMixLogistic : public MixLogisticFunction<DiscretizedMixLogistic, false> {};
class DiscretizedMixLogisticWithGrad : public MixLogisticFunction<DiscretizedMixLogisticWithGrad, true> {};
class DiscretizedLogistic : public LogisticFunction<DiscretizedLogistic, false> {};
class DiscretizedLogisticWithGrad : public LogisticFunction<DiscretizedLogisticWithGrad, true> {};

namespace {
TensorPair mix_with_grad(const at::Tensor& params, const at::Tensor& x, int64_t num_mixtures, int64_t bits,
                         bool compute_grad) {
  auto out = DiscretizedMixLogisticWithGrad::apply(params, x, num_mixtures, bits, compute_grad);
  return {out[0], out[1]};
}
TensorTriple logistic_with_grad(const at::Tensor& mean, const at::Tensor& log_scale, const at::Tensor& x,
                                int64_t bits, bool compute_grad) {
  auto out = DiscretizedLogisticWithGrad::apply(mean, log_scale, x, bits, compute_grad);
  return {out[0], out[1], out[2]};
}
// The log-likelihoods alone: the gradients are written when grad mode and requires_grad ask.
at::Tensor mix(const at::Tensor& params, const at::Tensor& x, int64_t num_mixtures, int64_t bits) {
  const bool grad = at::GradMode::is_enabled() && params.requires_grad();
  return DiscretizedMixLogistic::apply(params, x, num_mixtures, bits, grad)[0];
}
at::Tensor logistic(const at::Tensor& mean, const at::Tensor& log_scale, const at::Tensor& x, int64_t bits) {
  const bool grad = at::GradMode::is_enabled() && (mean.requires_grad() || log_scale.requires_grad());
  return DiscretizedLogistic::apply(mean, log_scale, x, bits, grad)[0];
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("discretized_mix_logistic_log_likelihood_with_grad", &mix_with_grad);
  m.impl("discretized_logistic_log_likelihood_with_grad", &logistic_with_grad);
  m.impl("discretized_mix_logistic_log_likelihood", &mix);
  m.impl("discretized_logistic_log_likelihood", &logistic);
  m.impl("sample_discretized_mix_logistic", torch::autograd::autogradNotImplementedFallback());
  m.impl("sample_discretized_logistic", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace autograd
}  // namespace fastvae
