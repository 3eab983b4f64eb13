// Autograd for the image ELBO (fastvae::image_elbo, the loss of fastvae::image_elbo_loss). The
// forward kernel wrote every input gradient for an incoming gradient of 1 (the likelihood's in
// the same pass as its value); backward hands them on through elbo_rescale_, in place, and moves
// no bytes where the incoming gradient is 1. No gradient-sized buffer beyond the one the
// likelihood kernel writes, and no device-to-host sync.
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

// Node name: CppNode<fastvae::autograd::ImageElbo> in a training step's graph. (Its helpers are
// members: setup.py compiles csrc/autograd/ as shared translation units.)
class ImageElbo : public torch::autograd::Function<ImageElbo> {
  using Sig = ImageElboOutputs(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                               const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, c10::string_view,
                               int64_t, int64_t, double, c10::string_view, std::array<bool, 2>);
  // Positions of the function's arguments: the tensors recon, x, kl, mu, logvar, then the 5
  // others of image_elbo and the gradient mask.
  enum Input { kRecon = 0, kX, kKl, kMu, kLogvar, kNumTensorInputs };
  static constexpr size_t kNumInputs = 11;
  // The gradient outputs of image_elbo_loss (after the loss) and the input each one answers.
  static constexpr Input kAnswers[] = {kRecon, kKl, kMu, kLogvar};

 public:
  static bool requires_grad(const std::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() && t->requires_grad();
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& recon, const at::Tensor& x,
                               const std::optional<at::Tensor>& kl, const std::optional<at::Tensor>& mu,
                               const std::optional<at::Tensor>& logvar, c10::string_view likelihood,
                               int64_t num_mixtures, int64_t bits, double beta, c10::string_view reduction,
                               std::array<bool, 2> mask) {
    static const auto op = find_op<Sig>("fastvae::image_elbo_loss");
    const bool kl_given = kl.has_value() && kl->defined();
    auto [loss, g_recon, g_kl, g_mu, g_logvar] = call_below_autograd(
        op, recon, x, kl, mu, logvar, likelihood, num_mixtures, bits, beta, reduction, mask);
    ctx->save_for_backward({g_recon, g_kl, g_mu, g_logvar});
    // Each tensor input's index among the node's edges (absent optional tensors have none) and
    // which gradients were written, packed into one integer: 4 bits per input, then 4 flags.
    int64_t packed = 0, next = 0;
    const bool present[kNumTensorInputs] = {true, true, kl_given, mu.has_value() && mu->defined(),
                                            logvar.has_value() && logvar->defined()};
    for (int i = 0; i < kNumTensorInputs; ++i) packed |= (present[i] ? ++next : int64_t{0}) << (4 * i);
    const bool written[4] = {mask[0], mask[1] && kl_given, mask[1] && !kl_given, mask[1] && !kl_given};
    for (int k = 0; k < 4; ++k) packed |= static_cast<int64_t>(written[k]) << (4 * kNumTensorInputs + k);
    ctx->saved_data["packed"] = packed;
    ctx->set_materialize_grads(false);
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(kNumInputs);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return out;
    const int64_t packed = ctx->saved_data["packed"].toInt();
    const auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> pre;
    std::vector<Input> slot;
    for (int k = 0; k < 4; ++k) {
      const Input input = kAnswers[k];
      const int64_t edge = ((packed >> (4 * input)) & 0xF) - 1;
      if (edge < 0 || !ctx->needs_input_grad(edge)) continue;
      TORCH_CHECK((packed >> (4 * kNumTensorInputs + k)) & 1,
                  "fastvae::image_elbo: the forward pass wrote no gradient for an input that needs one");
      pre.push_back(saved[k]);
      slot.push_back(input);
    }
    // In place: the gradient buffers never leave this node (fastvae::image_elbo returns the loss alone).
    const std::vector<at::Tensor> scaled = hand_on_rows(grad, pre, /*in_place_ok=*/true);
    for (size_t i = 0; i < slot.size(); ++i) out[slot[i]] = scaled[i];
    return once_differentiable("fastvae::image_elbo", std::move(out), grads);
  }
};

namespace {

at::Tensor image_elbo_autograd(const at::Tensor& recon, const at::Tensor& x, const std::optional<at::Tensor>& kl,
                      const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                      c10::string_view likelihood, int64_t num_mixtures, int64_t bits, double beta,
                      c10::string_view reduction) {
  // Which gradients the forward pass writes: read here, where grad mode is the caller's.
  const bool grad = at::GradMode::is_enabled();
  const bool kl_given = kl.has_value() && kl->defined();
  const std::array<bool, 2> mask = {
      grad && recon.requires_grad(),
      grad && (kl_given ? kl->requires_grad()
                   : ImageElbo::requires_grad(mu) || ImageElbo::requires_grad(logvar))};
  return ImageElbo::apply(recon, x, kl, mu, logvar, likelihood, num_mixtures, bits, beta, reduction, mask)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) { m.impl("image_elbo", &image_elbo_autograd); }

}  // namespace autograd
}  // namespace fastvae
