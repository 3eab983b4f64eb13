// Autograd for the log-densities log q(z|x) and log p(z): forward kernels below autograd, the
// backward ops for the gradients (they sum mu's and logvar's over the sample rows of z).
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

class GaussianLogDensity : public torch::autograd::Function<GaussianLogDensity> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& z, const at::Tensor& mu,
                            const at::Tensor& logvar) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "fastvae::gaussian_log_density");
    ctx->save_for_backward({z, mu, logvar});
    return call_below_autograd(op, z, mu, logvar);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<TensorTriple(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
            "fastvae::gaussian_log_density_backward");
    const auto saved = ctx->get_saved_variables();
    auto [grad_z, grad_mu, grad_logvar] =
        call_below_autograd(op, grads[0].contiguous(), saved[0], saved[1], saved[2]);
    return once_differentiable("fastvae::gaussian_log_density", {grad_z, grad_mu, grad_logvar}, grads);
  }
};

class StandardNormalLogDensity : public torch::autograd::Function<StandardNormalLogDensity> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& z) {
    static const auto op = find_op<at::Tensor(const at::Tensor&)>("fastvae::standard_normal_log_density");
    ctx->save_for_backward({z});
    return call_below_autograd(op, z);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>(
        "fastvae::standard_normal_log_density_backward");
    const auto saved = ctx->get_saved_variables();
    return once_differentiable("fastvae::standard_normal_log_density",
                               {call_below_autograd(op, grads[0].contiguous(), saved[0])}, grads);
  }
};

namespace {
at::Tensor gaussian_log_density(const at::Tensor& z, const at::Tensor& mu, const at::Tensor& logvar) {
  return GaussianLogDensity::apply(z, mu, logvar);
}
at::Tensor standard_normal_log_density(const at::Tensor& z) { return StandardNormalLogDensity::apply(z); }
}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("gaussian_log_density", &gaussian_log_density);
  m.impl("standard_normal_log_density", &standard_normal_log_density);
}

}  // namespace autograd
}  // namespace fastvae
