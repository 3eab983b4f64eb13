// Argument checks of fastvae::iwae_bound, shared by its CPU and CUDA entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/checks.h"

namespace fastvae {

// log_w: a floating, contiguous (K, B) matrix of log-weights with K >= 1 samples per example.
inline void check_log_weights(const at::Tensor& log_w) {
  check_matrix(log_w, "log_w");
  TORCH_CHECK(log_w.size(0) >= 1, "fastvae: log_w must hold at least one sample (K >= 1 rows), got shape ",
              log_w.sizes());
}

}  // namespace fastvae

namespace fastvae {

// The DReG gate's token of a (K, B) bound: the same (K, B) shape and device as log_w.
inline void check_iwae_gate(const at::Tensor& log_w, const std::optional<at::Tensor>& gate) {
  if (!gate.has_value() || !gate->defined()) return;
  check_same_shape(log_w, "log_w", *gate, "gate");
}

// z of the DReG gate: the samples (..., Z), floating, at least 1-D.
inline void check_gate_samples(const at::Tensor& z) {
  TORCH_CHECK(z.dim() >= 1, "fastvae: z must have a last (latent) dim, got a 0-D tensor");
  TORCH_CHECK(is_reduced_or_float(z.scalar_type()), "fastvae: z must be float64, float32, bfloat16 or float16, got ",
              z.scalar_type());
}

}  // namespace fastvae
