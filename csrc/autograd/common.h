// Helpers shared by the C++ autograd kernels in csrc/autograd/ (registered to the dispatcher's
// Autograd key): calling an op's kernel below autograd, and refusing double backward loudly.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <string>
#include <utility>

namespace fastvae {
namespace autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed dispatcher handle of a registered op, e.g.
//   static const auto op = find_op<at::Tensor(const at::Tensor&)>("fastvae::standard_normal_log_density");
// Keep it in a function-local static: the schema lookup is a hash-map search under a lock.
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name, const char* overload = "") {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).template typed<Sig>();
}

// Calls op with the Autograd (and ADInplaceOrView) keys excluded, so that the call reaches the
// backend kernel (CPU, CUDA, Meta/Fake...) instead of re-entering the autograd kernel that made
// it: forward passes redispatch with it, and backward passes call the backward ops with it so
// that those record no graph of their own.
template <typename Ret, typename... Args, typename... CallArgs>
Ret call_below_autograd(const c10::TypedOperatorHandle<Ret(Args...)>& op, CallArgs&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<CallArgs>(args)...);
}

// The gradients a backward pass returns, made safe for create_graph=True. The backward ops are
// not themselves differentiable, so a gradient of these gradients would be silently wrong.
// When grad mode is on inside a backward (create_graph=True), the defined gradients are passed
// through a DelayedError node, as Python's @once_differentiable does: their values are unchanged
// and first-order use works, but any backward through them raises a RuntimeError naming op_name.
// Otherwise (the usual case) they are returned untouched, at no cost.
inline variable_list once_differentiable(const char* op_name, variable_list grads) {
  if (!at::GradMode::is_enabled()) return grads;
  for (auto& g : grads) {
    if (!g.defined()) continue;
    // A fresh leaf that requires grad, so that DelayedError attaches its Error node whether or
    // not the incoming gradients required grad (a gradient penalty's grad_outputs usually don't).
    g = g.detach();
    g.set_requires_grad(true);
  }
  // DelayedError is only a factory here (identity values, Error node as grad_fn); it is not
  // kept in the graph, so a stack object works on every torch version (shared_ptr or
  // intrusive_ptr nodes).
  torch::autograd::DelayedError err(
      std::string(op_name) +
          " does not support double backward (a gradient of its gradient, e.g. "
          "torch.autograd.grad(..., create_graph=True) then backward again)",
      static_cast<int64_t>(grads.size()));
  return err.apply(std::move(grads));
}

// The gradient of an operand that broadcast over the leading rows of a (R, D) one (row r read
// its row r % rows): grad (R, D) summed over the R / rows repeats. No copy when nothing repeats.
// Sizes are SymInts so that torch.compile can trace it with dynamic shapes.
inline at::Tensor sum_repeats(const at::Tensor& grad, const c10::SymInt& rows) {
  if (grad.sym_size(0) == rows) return grad;
  return grad.view_symint({grad.sym_size(0) / rows, rows, grad.sym_size(1)}).sum(0);
}

}  // namespace autograd
}  // namespace fastvae
