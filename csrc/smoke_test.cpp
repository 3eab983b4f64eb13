// Links libfastvae, calls two ops through the dispatcher and checks them against plain ATen.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

int main() {
  auto mu = at::randn({5, 7}, at::kDouble);
  auto logvar = at::randn({5, 7}, at::kDouble);
  auto kl_op = c10::Dispatcher::singleton()
                   .findSchemaOrThrow("fastvae::kl_standard_normal", "")
                   .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  auto kl = kl_op.call(mu, logvar);
  auto ref = (0.5 * (logvar.exp() + mu * mu - 1 - logvar)).sum(-1);
  const double err = (kl - ref).abs().max().item<double>();
  std::printf("fastvae::kl_standard_normal max abs error vs ATen: %g\n", err);
  return err < 1e-12 ? 0 : 1;
}
