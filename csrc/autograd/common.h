// Helpers shared by the C++ autograd kernels in csrc/autograd/ (registered to the dispatcher's
// Autograd key): calling an op's kernel below autograd, and refusing double backward loudly.
#pragma once

#include <ATen/FuncTorchTLS.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function.h>  // Node, get_current_node (from node.h in newer torch)
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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

// What torch::autograd::Function::apply does first, for the hand-written nodes: functorch's
// transforms (vmap, grad) do not support C++ autograd nodes, so they raise instead of computing.
inline void refuse_functorch() {
  if (const auto& tls = at::functorch::functorchTLSAccessor()) tls->checkSupportsCppAutogradFunction();
}

namespace detail {

// Autograd nodes are held by std::shared_ptr in older torch releases and by c10::intrusive_ptr in
// newer ones; get_current_node() returns whichever this torch uses.
using NodePtr = decltype(torch::autograd::get_current_node());

template <typename N, typename... A>
NodePtr make_node(A&&... args) {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<N>(std::forward<A>(args)...);
  } else {
    return c10::make_intrusive<N>(std::forward<A>(args)...);
  }
}

}  // namespace detail

// The gradients a backward pass returns, made safe for create_graph=True. The backward ops are
// not themselves differentiable, so a gradient of these gradients would be silently wrong.
// When grad mode is on inside a backward (create_graph=True), the defined gradients get, as
// their grad_fn, an Error node whose edges lead to everything they were computed from: the
// forward op's inputs (the edges of the node being run) and the incoming gradients `incoming`
// that require grad. Their values are unchanged, so first-order use works, but any gradient
// of them, through backward() or autograd.grad(..., inputs=...), reaches the Error node and
// raises a RuntimeError naming op_name. (Python's @once_differentiable wires its error to
// detached copies only, so autograd.grad with allow_unused=True silently returns None past
// it.) Otherwise, the usual case, the gradients are returned untouched at no cost.
inline variable_list once_differentiable(const char* op_name, variable_list grads,
                                         const variable_list& incoming = {}) {
  if (!at::GradMode::is_enabled()) return grads;
  torch::autograd::edge_list edges;
  if (auto node = torch::autograd::get_current_node()) edges = node->next_edges();
  for (const auto& g : incoming) {
    if (g.defined() && g.requires_grad()) edges.push_back(torch::autograd::impl::gradient_edge(g));
  }
  auto error = detail::make_node<torch::autograd::Error>(
      std::string(op_name) +
          " does not support double backward (a gradient of its gradient, e.g. "
          "torch.autograd.grad(..., create_graph=True) then backward again)",
      std::move(edges));
  for (auto& g : grads) {
    if (!g.defined()) continue;
    g = g.detach();  // same values, no history: the Error node becomes its only history
    torch::autograd::set_history(g, error);
  }
  return grads;
}

// The gradient of an operand that broadcast over the leading rows of a (R, D) one (row r read
// its row r % rows): grad (R, D) summed over the R / rows repeats. No copy when nothing repeats.
// Sizes are SymInts so that torch.compile can trace it with dynamic shapes.
inline at::Tensor sum_repeats(const at::Tensor& grad, const c10::SymInt& rows) {
  if (grad.sym_size(0) == rows) return grad;
  return grad.view_symint({grad.sym_size(0) / rows, rows, grad.sym_size(1)}).sum(0);
}

// Fake or functional tensors (torch.compile's tracing): a traced graph must not mutate what the
// forward pass saved.
inline bool traced(const at::Tensor& t) {
  const auto ks = t.key_set();
  return ks.has(c10::DispatchKey::Python) || ks.has(c10::DispatchKey::Functionalize) ||
         ks.has(c10::DispatchKey::Meta);
}

// Gradients a forward pass wrote for an incoming gradient of 1 (per row), handed on as the true
// ones: times grad, by fastvae::elbo_rescale(_). With in_place_ok (the
// saved tensors are the op's own buffers, which its callers do not read after backward), the
// last backward through a graph (no retain_graph, not traced) scales them in place, and where the
// factor is 1 the kernel moves no bytes; otherwise the results are new tensors. No test of the
// factor here: on a GPU it would need a device-to-host sync.
inline std::vector<at::Tensor> hand_on_precomputed(const at::Tensor& grad, std::vector<at::Tensor> pre,
                                                   bool in_place_ok) {
  if (pre.empty()) return pre;
  if (in_place_ok && !torch::autograd::get_current_graph_task_keep_graph() && !traced(grad) && !traced(pre[0])) {
    static const auto rescale_ = find_op<void(const at::Tensor&, at::TensorList)>("fastvae::elbo_rescale_");
    call_below_autograd(rescale_, grad, pre);
    return pre;
  }
  static const auto rescale =
      find_op<std::vector<at::Tensor>(const at::Tensor&, at::TensorList)>("fastvae::elbo_rescale");
  return call_below_autograd(rescale, grad, pre);
}

// hand_on_precomputed for gradients of any layout in which each row is one block of memory
// (dense with the batch dim outermost, as grad_like in common/discretized_logistic_checks.h
// makes them: channels-last included): scaled as (rows, rest) matrices, returned in their own
// strides.
inline std::vector<at::Tensor> hand_on_rows(const at::Tensor& grad, const std::vector<at::Tensor>& saved,
                                            bool in_place_ok) {
  std::vector<at::Tensor> flat;
  for (const auto& t : saved) {
    const c10::SymInt rows = t.sym_size(0), rest = t.sym_numel() / rows;
    flat.push_back(t.is_contiguous() ? t : t.as_strided_symint({rows, rest}, {rest, 1}));
  }
  auto out = hand_on_precomputed(grad, flat, in_place_ok);
  for (size_t i = 0; i < out.size(); ++i) {
    if (!saved[i].is_contiguous()) out[i] = out[i].as_strided_symint(saved[i].sym_sizes(), saved[i].sym_strides());
  }
  return out;
}

}  // namespace autograd
}  // namespace fastvae
