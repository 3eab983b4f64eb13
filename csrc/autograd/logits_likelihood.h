// Autograd of the likelihoods whose forward kernel writes d ll / d logits in the same pass
// (Bernoulli, continuous Bernoulli): op(logits, x, compute_grad) -> (ll (rows,), dlogits), x
// broadcast over the logits' leading rows. Backward scales the saved gradient by the one that
// arrived; d ll / d x = logits for both (soft targets), summed over the repeats.
#pragma once

#include "autograd/common.h"
#include "ops.h"

namespace fastvae {
namespace autograd {

// Op: the autograd Function itself (its node's name), deriving from LogitsLikelihood<Op>, with
// `static constexpr const char* kName`, the op's qualified name.
template <typename Op>
class LogitsLikelihood : public torch::autograd::Function<Op> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& x,
                               bool compute_grad) {
    static const auto op = find_op<TensorPair(const at::Tensor&, const at::Tensor&, bool)>(Op::kName);
    auto [ll, dlogits] = call_below_autograd(op, logits, x, compute_grad);
    // The logits are kept only if x needs a gradient, which soft targets rarely do.
    ctx->save_for_backward({dlogits, x.requires_grad() ? logits : at::Tensor()});
    ctx->saved_data["x_rows"] = x.sym_size(0);
    // The second output is the saved gradient itself: no gradient flows into it, and autograd
    // must not fill a zero tensor of the data's size for it on every backward pass.
    ctx->mark_non_differentiable({dlogits});
    ctx->set_materialize_grads(false);
    return {ll, dlogits};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_ll = grads[0];
    at::Tensor grad_logits, grad_x;
    if (!grad_ll.defined()) return {grad_logits, grad_x, at::Tensor()};  // nothing flowed in
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &dlogits = saved[0], &logits = saved[1];
    if (ctx->needs_input_grad(0)) {
      TORCH_CHECK(dlogits.sym_numel() != 0, Op::kName,
                  " was called with compute_grad=False, so it has no gradient for logits");
      // Into a new tensor: dlogits is also the op's second output, which its callers may hold.
      grad_logits = hand_on_precomputed(grad_ll, {dlogits}, /*in_place_ok=*/false)[0];
    }
    if (ctx->needs_input_grad(1)) {
      grad_x = sum_repeats(logits.mul(grad_ll.unsqueeze(1).to(logits.scalar_type())),
                           ctx->saved_data["x_rows"].toSymInt());
    }
    return once_differentiable(Op::kName, {grad_logits, grad_x, at::Tensor()}, grads);
  }

  static TensorPair apply_pair(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
    auto out = Op::apply(logits, x, compute_grad);
    return {out[0], out[1]};
  }
};

}  // namespace autograd
}  // namespace fastvae
