// Autograd for the KL term: the forward kernel below autograd, the backward op for the gradient.
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

class KlStandardNormal : public torch::autograd::Function<KlStandardNormal> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("fastvae::kl_standard_normal");
    ctx->save_for_backward({mu, logvar});
    return call_below_autograd(op, mu, logvar);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "fastvae::kl_standard_normal_backward");
    const auto saved = ctx->get_saved_variables();
    auto [grad_mu, grad_logvar] = call_below_autograd(op, grads[0].contiguous(), saved[0], saved[1]);
    return once_differentiable("fastvae::kl_standard_normal", {grad_mu, grad_logvar}, grads);
  }
};

namespace {
at::Tensor kl_standard_normal(const at::Tensor& mu, const at::Tensor& logvar) {
  return KlStandardNormal::apply(mu, logvar);
}
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) { m.impl("kl_standard_normal", &kl_standard_normal); }

}  // namespace autograd
}  // namespace fastvae
