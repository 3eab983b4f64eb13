// Autograd for the categorical log-likelihood: the forward kernel writes d ll / d logits =
// onehot(x) - softmax in the same pass (with compute_grad); backward scales it by the gradient
// that arrived for each image. The integer levels x get no gradient. The sampler returns integer
// levels, which have no gradient: autograd's not-implemented kernel passes it through.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

class CategoricalLogLikelihood : public torch::autograd::Function<CategoricalLogLikelihood> {
 public:
  static constexpr const char* kName = "fastvae::categorical_log_likelihood";

  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& x,
                               bool compute_grad) {
    static const auto op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, bool)>(kName);
    auto [ll, dlogits] = call_below_autograd(op, logits, x, compute_grad);
    ctx->save_for_backward({dlogits});
    ctx->mark_non_differentiable({dlogits});  // the saved gradient, also returned
    ctx->set_materialize_grads(false);
    return {ll, dlogits};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_ll = grads[0];
    at::Tensor grad_logits;
    if (!grad_ll.defined() || !ctx->needs_input_grad(0)) return {grad_logits, at::Tensor(), at::Tensor()};
    const at::Tensor dlogits = ctx->get_saved_variables()[0];
    TORCH_CHECK(dlogits.sym_numel() != 0, kName,
                " was called with compute_grad=False, so it has no gradient for logits");
    const c10::SymInt rows = dlogits.sym_size(0), n = dlogits.sym_numel();
    if (dlogits.is_non_overlapping_and_dense() && (rows == 1 || dlogits.sym_stride(0) * rows == n)) {
      // Each image's gradient is one block of memory (any layout within it, e.g. channels-last):
      // times the per-image factor in the accumulation type, as a (rows, n / rows) matrix, into
      // a new tensor (dlogits is also the op's second output, which its callers may hold), then
      // laid out as dlogits.
      const at::Tensor flat = dlogits.as_strided_symint({rows, n / rows}, {n / rows, 1});
      grad_logits = hand_on_precomputed(grad_ll, {flat}, /*in_place_ok=*/false)[0].as_strided_symint(
          dlogits.sym_sizes(), dlogits.sym_strides());
    } else {
      grad_logits = dlogits.mul(grad_ll.view_symint({rows, 1, 1, 1})).to(dlogits.scalar_type());
    }
    return once_differentiable(kName, {grad_logits, at::Tensor(), at::Tensor()}, grads);
  }
};

namespace {
TensorPair categorical_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  auto out = CategoricalLogLikelihood::apply(logits, x, compute_grad);
  return {out[0], out[1]};
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("categorical_log_likelihood", &categorical_log_likelihood);
  m.impl("sample_categorical", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace autograd
}  // namespace fastvae
