// Autograd for the fused ELBO (fastvae::elbo_loss). The forward kernel already wrote every input
// gradient for an incoming gradient of 1; backward hands them on through elbo_rescale_, one
// kernel that reads the incoming gradient on the device and returns at once where it is 1. The
// host never looks at the gradient's value, so a training step needs no device-to-host sync.
//
// fastvae::elbo (the loss alone, what every training step calls) has a hand-written node, as
// torch's generated ones: torch::autograd::Function's general machinery costs more host time at
// small sizes than the kernel (issue 17). fastvae::elbo_loss (the loss and its gradients, for
// tests and raw use) keeps a Function. Both share the forward bookkeeping and the backward body.
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
constexpr size_t kNumSaved = 8;    // the 5 gradients written, recon, x, obs_logvar (see ElboState)

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

// Everything backward needs: the tensors to save (the forward pass's gradients; the logits only
// for d loss / d x, the Gaussian inputs only for a variance shared by rows under reduction "none"),
// the flags and the row counts (SymInts: torch.compile traces this with dynamic shapes).
struct ElboState {
  std::array<at::Tensor, kNumSaved> saved;
  Flags flags;
  c10::SymInt x_rows, rows;
};

ElboState elbo_state(const at::Tensor& recon, const at::Tensor& x, const at::Tensor& kl, const at::Tensor& obs_logvar,
                     c10::string_view likelihood, c10::string_view reduction, std::array<bool, 3> grad_mask,
                     const at::Tensor& g_recon, const at::Tensor& g_kl, const at::Tensor& g_mu,
                     const at::Tensor& g_logvar, const at::Tensor& g_obs, const at::Tensor& mu,
                     const at::Tensor& logvar) {
  ElboState s;
  int64_t next = 0, k = 0;
  for (const at::Tensor* t : {&recon, &x, &kl, &mu, &logvar, &obs_logvar}) s.flags.set_edge(k++, t->defined() ? next++ : -1);
  const bool gaussian = likelihood == "gaussian";
  const bool none = reduction == "none";
  // A variance shared by rows under reduction "none": its gradient (a sum over rows of
  // arbitrary per-row weights) is left to gaussian_log_likelihood_backward.
  const bool obs_written = grad_mask[2] && gaussian && obs_logvar.defined() &&
                           (!none || obs_logvar.sym_size(0) == recon.sym_size(0));
  const bool obs_later = gaussian && obs_logvar.defined() && obs_logvar.requires_grad() && !obs_written && none &&
                         obs_logvar.sym_size(0) != recon.sym_size(0);
  const bool keep_recon = (x.requires_grad() && !gaussian) || obs_later;
  s.saved = {g_recon, g_kl, g_mu, g_logvar, g_obs, keep_recon ? recon : at::Tensor(), obs_later ? x : at::Tensor(),
             obs_later ? obs_logvar : at::Tensor()};
  s.flags.set(Flags::kGaussian, gaussian);
  s.flags.set(Flags::kNone, none);
  s.flags.set(Flags::kMean, reduction == "mean");
  // Which of the five gradient outputs the forward pass wrote (recon, kl, mu, logvar, obs_logvar).
  const bool written[5] = {grad_mask[0], grad_mask[1] && kl.defined(), grad_mask[1] && !kl.defined(),
                           grad_mask[1] && !kl.defined(), obs_written};
  for (int w = 0; w < 5; ++w) s.flags.set(Flags::kWritten + w, written[w]);
  s.x_rows = x.sym_size(0);
  s.rows = recon.sym_size(0);
  return s;
}

// The gradients of elbo_loss's kNumInputs arguments for the incoming gradient `grad`;
// needs_edge(e): whether the node's edge e wants its gradient.
template <typename NeedsEdge>
variable_list elbo_backward(const at::Tensor& grad, const std::array<at::Tensor, kNumSaved>& saved, Flags flags,
                            const c10::SymInt& x_rows, const c10::SymInt& rows, NeedsEdge needs_edge) {
  variable_list out(kNumInputs);
  const bool gaussian = flags.get(Flags::kGaussian);
  bool need[kNumTensorInputs];
  for (int i = 0; i < kNumTensorInputs; ++i) need[i] = flags.edge(i) >= 0 && needs_edge(flags.edge(i));

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
    if (gaussian) {
      out[kX] = sum_repeats(grad_recon.neg(), x_rows);
    } else {
      // d loss / d x = -w_r * logits with w_r the row's weight: row_scale times its gradient.
      const at::Tensor& logits = saved[5];
      const at::Tensor w = none ? grad.unsqueeze(1).neg()
                           : flags.get(Flags::kMean) ? grad.div(c10::Scalar(rows)).neg()
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
  return out;
}

ElboOutputs call_elbo_loss(const at::Tensor& recon, const at::Tensor& x, const std::optional<at::Tensor>& kl,
                           const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                           const std::optional<at::Tensor>& obs, double obs_logvar_value, c10::string_view likelihood,
                           double beta, c10::string_view reduction, std::array<bool, 3> grad_mask) {
  static const auto op = find_op<ElboSig>("fastvae::elbo_loss");
  return call_below_autograd(op, recon, x, kl, mu, logvar, obs, obs_logvar_value, likelihood, beta, reduction,
                             grad_mask);
}

}  // namespace

// fastvae::elbo_loss's autograd: the op returns the loss and the five gradient outputs; the
// gradients stay saved here too. Node name: CppNode<fastvae::autograd::ElboLossWithGrads>.
class ElboLossWithGrads : public torch::autograd::Function<ElboLossWithGrads> {
 public:
  // Absent optional tensors are passed as std::nullopt: autograd gives them no edge, so
  // needs_input_grad's index of each present tensor is kept in the saved flags.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& recon, const at::Tensor& x,
                               const std::optional<at::Tensor>& kl, const std::optional<at::Tensor>& mu,
                               const std::optional<at::Tensor>& logvar, const std::optional<at::Tensor>& obs,
                               double obs_logvar_value, c10::string_view likelihood, double beta,
                               c10::string_view reduction, std::array<bool, 3> grad_mask) {
    auto [loss, g_recon, g_kl, g_mu, g_logvar, g_obs] =
        call_elbo_loss(recon, x, kl, mu, logvar, obs, obs_logvar_value, likelihood, beta, reduction, grad_mask);
    ElboState s = elbo_state(recon, x, value(kl), value(obs), likelihood, reduction, grad_mask, g_recon, g_kl, g_mu,
                             g_logvar, g_obs, value(mu), value(logvar));
    ctx->save_for_backward(variable_list(s.saved.begin(), s.saved.end()));
    ctx->saved_data["flags"] = s.flags.bits;
    ctx->saved_data["x_rows"] = s.x_rows;
    ctx->saved_data["rows"] = s.rows;
    ctx->set_materialize_grads(false);  // unused outputs send no gradient: no zero tensors for them
    ctx->mark_non_differentiable({g_recon, g_kl, g_mu, g_logvar, g_obs});
    return {loss, g_recon, g_kl, g_mu, g_logvar, g_obs};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(kNumInputs);  // nothing flowed into the loss
    const auto saved_list = ctx->get_saved_variables();
    std::array<at::Tensor, kNumSaved> saved;
    std::copy(saved_list.begin(), saved_list.end(), saved.begin());
    auto out = elbo_backward(grads[0], saved, Flags{ctx->saved_data["flags"].toInt()},
                             ctx->saved_data["x_rows"].toSymInt(), ctx->saved_data["rows"].toSymInt(),
                             [ctx](int64_t e) { return ctx->needs_input_grad(e); });
    return once_differentiable("fastvae::elbo_loss", std::move(out), grads);
  }
};

namespace {

// fastvae::elbo's backward node: its edges are the present tensor inputs in schema order.
struct ElboLoss : torch::autograd::Node {
  explicit ElboLoss(ElboState s) : flags_(s.flags), x_rows_(std::move(s.x_rows)), rows_(std::move(s.rows)) {
    for (size_t i = 0; i < kNumSaved; ++i) saved_[i] = torch::autograd::SavedVariable(s.saved[i], false);
  }

  std::string name() const override { return "fastvae::autograd::ElboLoss"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& v : saved_) v.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t edges = num_outputs();
    if (!grads[0].defined()) return variable_list(edges);  // nothing flowed into the loss
    std::array<at::Tensor, kNumSaved> saved;
    for (size_t i = 0; i < kNumSaved; ++i) saved[i] = saved_[i].unpack();
    auto all = elbo_backward(grads[0], saved, flags_, x_rows_, rows_,
                             [this](int64_t e) { return task_should_compute_output(e); });
    // elbo_backward answers every argument; the node returns one gradient per edge.
    variable_list out(edges);
    for (int i = 0; i < kNumTensorInputs; ++i) {
      if (flags_.edge(i) >= 0) out[flags_.edge(i)] = std::move(all[i]);
    }
    return once_differentiable("fastvae::elbo_loss", std::move(out), grads);
  }

 private:
  Flags flags_;
  c10::SymInt x_rows_, rows_;
  std::array<torch::autograd::SavedVariable, kNumSaved> saved_;
};

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
  refuse_functorch();
  const bool grad = at::GradMode::is_enabled();
  const bool kl_given = kl.has_value() && kl->defined();
  const std::array<bool, 3> mask = {
      grad && (recon.requires_grad() || x.requires_grad()),
      grad && (kl_given ? kl->requires_grad() : requires_grad(mu) || requires_grad(logvar)),
      grad && likelihood == "gaussian" && requires_grad(obs_logvar)};
  auto [loss, g_recon, g_kl, g_mu, g_logvar, g_obs] =
      call_elbo_loss(recon, x, kl, mu, logvar, obs_logvar, obs_logvar_value, likelihood, beta, reduction, mask);
  if (!(mask[0] || mask[1] || mask[2])) return loss;
  const at::Tensor kl_t = value(kl), mu_t = value(mu), logvar_t = value(logvar), obs_t = value(obs_logvar);
  auto node = detail::make_node<ElboLoss>(elbo_state(recon, x, kl_t, obs_t, likelihood, reduction, mask, g_recon,
                                                     g_kl, g_mu, g_logvar, g_obs, mu_t, logvar_t));
  torch::autograd::edge_list edges;
  for (const at::Tensor* t : {&recon, &x, &kl_t, &mu_t, &logvar_t, &obs_t}) {
    if (t->defined()) edges.push_back(torch::autograd::impl::gradient_edge(*t));
  }
  node->set_next_edges(std::move(edges));
  torch::autograd::set_history(loss, node);
  return loss;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("elbo_loss", &elbo_loss);
  m.impl("elbo", &elbo);
}

}  // namespace autograd
}  // namespace fastvae
