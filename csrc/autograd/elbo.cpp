// Autograd for the fused ELBO (fastvae::elbo_loss). The forward kernel already wrote every input
// gradient for an incoming gradient of 1; backward hands them on through elbo_rescale_, one
// kernel that reads the incoming gradient on the device and returns at once where it is 1. The
// host never looks at the gradient's value, so a training step needs no device-to-host sync.
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

namespace {

using ElboSig = ElboOutputs(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, double, c10::string_view, double, c10::string_view,
                            std::array<bool, 3>);

at::Tensor value(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

// Positions of the tensor arguments of elbo_loss, in schema order.
enum Input { kRecon = 0, kX, kKl, kMu, kLogvar, kObs, kNumTensorInputs };
constexpr size_t kNumInputs = 11;  // every argument of elbo_loss, tensors first

// What the forward pass tells its backward, in the bits of one int64: the likelihood and
// reduction, which gradients it wrote, and each tensor input's index among the node's edges
// (needs_input_grad's numbering: absent optional tensors have none), 4 bits each, biased by 1.
struct Flags {
  enum Bit { kGaussian = 0, kNone, kMean, kWritten, kEdges = kWritten + 5 };
  int64_t bits = 0;

  void set(int bit, bool on) { bits |= static_cast<int64_t>(on) << bit; }
  bool get(int bit) const { return (bits >> bit) & 1; }
  void set_edge(int64_t input, int64_t edge) { bits |= (edge + 1) << (kEdges + 4 * input); }
  int64_t edge(int64_t input) const { return ((bits >> (kEdges + 4 * input)) & 0xF) - 1; }
};

}  // namespace

// The autograd of the ELBO ops. kGradOutputs: the op returns the loss and the five gradient
// outputs (fastvae::elbo_loss), or the loss alone (fastvae::elbo, what fastvae.functional.elbo
// calls: nothing but the loss crosses into Python). Either way the gradients stay saved here.
template <typename Self, bool kGradOutputs>
class ElboFunction : public torch::autograd::Function<Self> {
 public:
  // Absent optional tensors are passed as std::nullopt: autograd gives them no edge, so
  // needs_input_grad's index of each present tensor is kept in the saved flags.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& recon, const at::Tensor& x,
                               const std::optional<at::Tensor>& kl_opt, const std::optional<at::Tensor>& mu_opt,
                               const std::optional<at::Tensor>& logvar_opt,
                               const std::optional<at::Tensor>& obs_opt, double obs_logvar_value,
                               c10::string_view likelihood, double beta, c10::string_view reduction,
                               std::array<bool, 3> grad_mask) {
    static const auto op = find_op<ElboSig>("fastvae::elbo_loss");
    auto [loss, g_recon, g_kl, g_mu, g_logvar, g_obs] =
        call_below_autograd(op, recon, x, kl_opt, mu_opt, logvar_opt, obs_opt, obs_logvar_value, likelihood, beta,
                            reduction, grad_mask);
    const at::Tensor kl = value(kl_opt), mu = value(mu_opt), logvar = value(logvar_opt), obs_logvar = value(obs_opt);
    // Everything backward needs but tensors and sizes, packed into one integer (one saved_data
    // entry instead of seven: this runs on every training step).
    Flags flags;
    int64_t next = 0, k = 0;
    for (const at::Tensor* t : {&recon, &x, &kl, &mu, &logvar, &obs_logvar}) flags.set_edge(k++, t->defined() ? next++ : -1);
    const bool gaussian = likelihood == "gaussian";
    const bool none = reduction == "none";
    const bool x_grad = x.requires_grad();
    // A variance shared by rows under reduction "none": its gradient (a sum over rows of
    // arbitrary per-row weights) is left to gaussian_log_likelihood_backward.
    // (Sizes are read as SymInts: torch.compile traces this with dynamic shapes.)
    const bool obs_written = grad_mask[2] && gaussian && obs_logvar.defined() &&
                             (!none || obs_logvar.sym_size(0) == recon.sym_size(0));
    const bool obs_later = gaussian && obs_logvar.defined() && obs_logvar.requires_grad() && !obs_written && none &&
                           obs_logvar.sym_size(0) != recon.sym_size(0);
    // The logits are kept only for d loss / d x (soft Bernoulli targets), the Gaussian inputs only
    // for obs_later: usually nothing but the forward pass's gradients is saved.
    at::Tensor keep_recon = (x_grad && !gaussian) || obs_later ? recon : at::Tensor();
    ctx->save_for_backward({g_recon, g_kl, g_mu, g_logvar, g_obs, keep_recon, obs_later ? x : at::Tensor(),
                            obs_later ? obs_logvar : at::Tensor()});
    flags.set(Flags::kGaussian, gaussian);
    flags.set(Flags::kNone, none);
    flags.set(Flags::kMean, reduction == "mean");
    // Which of the five gradient outputs the forward pass wrote (recon, kl, mu, logvar, obs_logvar).
    const bool written[5] = {grad_mask[0], grad_mask[1] && kl.defined(), grad_mask[1] && !kl.defined(),
                             grad_mask[1] && !kl.defined(), obs_written};
    for (int w = 0; w < 5; ++w) flags.set(Flags::kWritten + w, written[w]);
    ctx->saved_data["flags"] = flags.bits;
    ctx->saved_data["x_rows"] = x.sym_size(0);
    ctx->saved_data["rows"] = recon.sym_size(0);
    // Unused outputs send no gradient: no zero tensors are made for them.
    ctx->set_materialize_grads(false);
    if constexpr (!kGradOutputs) {
      return {loss};
    } else {
      ctx->mark_non_differentiable({g_recon, g_kl, g_mu, g_logvar, g_obs});
      return {loss, g_recon, g_kl, g_mu, g_logvar, g_obs};
    }
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(kNumInputs);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return out;  // nothing flowed into the loss
    const auto saved = ctx->get_saved_variables();
    const Flags flags{ctx->saved_data["flags"].toInt()};
    const bool gaussian = flags.get(Flags::kGaussian);
    bool need[kNumTensorInputs];
    for (int i = 0; i < kNumTensorInputs; ++i) need[i] = flags.edge(i) >= 0 && ctx->needs_input_grad(flags.edge(i));

    // The forward pass's gradients to hand on: saved[0..4] answer recon, kl, mu, logvar, obs_logvar.
    static const char* names[] = {"recon", "kl", "mu", "logvar", "obs_logvar"};
    static const Input inputs[] = {kRecon, kKl, kMu, kLogvar, kObs};
    std::vector<at::Tensor> pre;
    std::vector<int> slot;
    for (int k = 0; k < 5; ++k) {
      // The Gaussian d loss / d x is -(d loss / d mean): recon's gradient serves x too.
      const bool wanted = need[inputs[k]] || (k == 0 && gaussian && need[kX]);
      if (!wanted) continue;
      if (!flags.get(Flags::kWritten + k)) {
        // A shared variance under reduction "none" is computed below; anything else is missing.
        TORCH_CHECK(k == 4 && saved[7].defined(), "fastvae::elbo_loss was called with its grad_mask entry for ",
                    names[k], " False, so it has no gradient for ", names[k]);
        continue;
      }
      pre.push_back(saved[k]);
      slot.push_back(k);
    }

    // Where the incoming gradient is 1 (the usual loss.backward()), nothing moves. In place: the
    // op's gradient outputs are its backward's buffers (F.elbo and ELBOLoss never return them).
    const std::vector<at::Tensor> scaled = hand_on_precomputed(grad, std::move(pre), /*in_place_ok=*/true);
    at::Tensor grad_recon;
    for (size_t i = 0; i < slot.size(); ++i) {
      if (slot[i] == 0) grad_recon = scaled[i];
      if (need[inputs[slot[i]]]) out[inputs[slot[i]]] = scaled[i];
    }

    const bool none = flags.get(Flags::kNone);
    if (need[kX]) {
      at::NoGradGuard no_grad;
      const c10::SymInt x_rows = ctx->saved_data["x_rows"].toSymInt();
      if (gaussian) {
        out[kX] = sum_repeats(grad_recon.neg(), x_rows);
      } else {
        // d loss / d x = -w_r * logits with w_r the row's weight: row_scale times its gradient.
        const at::Tensor& logits = saved[5];
        const at::Tensor w = none ? grad.unsqueeze(1).neg()
                             : flags.get(Flags::kMean) ? grad.div(c10::Scalar(ctx->saved_data["rows"].toSymInt())).neg()
                                                                 : grad.neg();
        out[kX] = sum_repeats(logits.to(w.scalar_type()).mul(w), x_rows);
      }
    }
    if (need[kObs] && !out[kObs].defined() && saved[7].defined()) {
      static const auto op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, bool)>("fastvae::gaussian_log_likelihood_backward");
      // loss_r = beta * kl_r - ll_r: the likelihood's incoming gradient is -grad.
      out[kObs] = std::get<1>(call_below_autograd(op, grad.neg().contiguous(), saved[5], saved[6], saved[7], true));
    }
    return once_differentiable("fastvae::elbo_loss", std::move(out), grads);
  }
};

// Node names: CppNode<fastvae::autograd::ElboLoss> in a training step's graph.
class ElboLoss : public ElboFunction<ElboLoss, false> {};
class ElboLossWithGrads : public ElboFunction<ElboLossWithGrads, true> {};

namespace {

ElboOutputs elbo_loss(const at::Tensor& recon, const at::Tensor& x, const std::optional<at::Tensor>& kl,
                      const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                      const std::optional<at::Tensor>& obs_logvar, double obs_logvar_value,
                      c10::string_view likelihood, double beta, c10::string_view reduction,
                      std::array<bool, 3> grad_mask) {
  auto out = ElboLossWithGrads::apply(recon, x, kl, mu, logvar, obs_logvar, obs_logvar_value, likelihood, beta,
                                      reduction, grad_mask);
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

bool requires_grad(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->requires_grad();
}

// fastvae::elbo: the loss alone, the gradient mask read here (grad mode, requires_grad) instead
// of being passed from Python on every call.
at::Tensor elbo(const at::Tensor& recon, const at::Tensor& x, const std::optional<at::Tensor>& kl,
                const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                const std::optional<at::Tensor>& obs_logvar, double obs_logvar_value, c10::string_view likelihood,
                double beta, c10::string_view reduction) {
  const bool grad = at::GradMode::is_enabled();
  const bool kl_given = kl.has_value() && kl->defined();
  const std::array<bool, 3> mask = {
      grad && (recon.requires_grad() || x.requires_grad()),
      grad && (kl_given ? kl->requires_grad() : requires_grad(mu) || requires_grad(logvar)),
      grad && likelihood == "gaussian" && requires_grad(obs_logvar)};
  return ElboLoss::apply(recon, x, kl, mu, logvar, obs_logvar, obs_logvar_value, likelihood, beta, reduction,
                         mask)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("elbo_loss", &elbo_loss);
  m.impl("elbo", &elbo);
}

}  // namespace autograd
}  // namespace fastvae
