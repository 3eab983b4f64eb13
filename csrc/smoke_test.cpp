// Links libfastvae, calls an op through the dispatcher, checks it against plain ATen, then runs
// .backward() through it (the C++ autograd of csrc/autograd/) and checks the gradients against
// the closed form: d KL / d mu = mu, d KL / d logvar = (e^logvar - 1) / 2.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

int main() {
  auto mu = at::randn({5, 7}, at::kDouble).set_requires_grad(true);
  auto logvar = at::randn({5, 7}, at::kDouble).set_requires_grad(true);
  auto kl_op = c10::Dispatcher::singleton()
                   .findSchemaOrThrow("fastvae::kl_standard_normal", "")
                   .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  auto kl = kl_op.call(mu, logvar);
  const auto m = mu.detach(), lv = logvar.detach();
  auto ref = (0.5 * (lv.exp() + m * m - 1 - lv)).sum(-1);
  const double err = (kl.detach() - ref).abs().max().item<double>();
  std::printf("fastvae::kl_standard_normal max abs error vs ATen: %g\n", err);

  // A random incoming gradient per row, so that the check covers the row scaling too.
  auto w = at::rand({5}, at::kDouble) + 0.5;
  (kl * w).sum().backward();
  const auto wc = w.unsqueeze(1);
  const double grad_err = std::max((mu.grad() - wc * m).abs().max().item<double>(),
                                   (logvar.grad() - wc * (lv.exp() - 1) / 2).abs().max().item<double>());
  std::printf("fastvae::kl_standard_normal backward max abs error vs closed form: %g\n", grad_err);
  return err < 1e-12 && grad_err < 1e-12 ? 0 : 1;
}
