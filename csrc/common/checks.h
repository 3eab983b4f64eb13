// Argument checks shared by the CPU and CUDA entry points, so both reject bad input with the
// same message. The Python layer (fastvae/functional.py) validates user-facing arguments first;
// these guard the raw ops, which torch.ops.fastvae.* also exposes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace fastvae {

inline bool is_reduced_or_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A floating 2-D contiguous (rows, cols) operand.
inline void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, "fastvae: ", name, " must be 2-D (rows, cols), got ", t.dim(), "-D");
  TORCH_CHECK(is_reduced_or_float(t.scalar_type()), "fastvae: ", name,
              " must be float64, float32, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fastvae: ", name, " must be contiguous");
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b,
                              const char* bn) {
  TORCH_CHECK(a.device() == b.device(), "fastvae: ", an, " is on ", a.device(), " but ", bn,
              " is on ", b.device());
}

// `part` broadcasts over the leading rows of `full`: same columns, and its row count divides the
// full row count (row r of full reads row r % part.rows of part).
inline void check_row_broadcast(const at::Tensor& full, const char* fn, const at::Tensor& part,
                                const char* pn) {
  check_same_device(full, fn, part, pn);
  TORCH_CHECK(part.dim() == 2 && part.size(1) == full.size(1), "fastvae: ", pn, " has shape ",
              part.sizes(), " but ", fn, " has shape ", full.sizes(), " (columns must match)");
  TORCH_CHECK(part.size(0) > 0 && full.size(0) % part.size(0) == 0, "fastvae: rows of ", pn, " (",
              part.size(0), ") must divide the rows of ", fn, " (", full.size(0), ")");
}

inline void check_same_shape(const at::Tensor& a, const char* an, const at::Tensor& b,
                             const char* bn) {
  check_same_device(a, an, b, bn);
  TORCH_CHECK(a.sizes() == b.sizes(), "fastvae: ", an, " has shape ", a.sizes(), " but ", bn,
              " has shape ", b.sizes());
}

// The accumulation / output dtype: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The 2-element int64 (seed, offset) tensor the sampling ops read their Philox stream from.
inline void check_rng_state(const at::Tensor& s, const at::Tensor& like, const char* like_name = "mu") {
  TORCH_CHECK(s.scalar_type() == at::kLong && s.numel() == 2 && s.is_contiguous(),
              "fastvae: rng_state must be a contiguous int64 tensor of 2 elements (seed, offset)");
  check_same_device(s, "rng_state", like, like_name);
}

// The dtype of the discrete samplers' levels 0 .. levels - 1: uint8 for up to 256 levels (8-bit
// images), int32 above (int16 would not hold the 2^16 levels of 16-bit data).
inline at::ScalarType level_dtype(int64_t levels) { return levels <= 256 ? at::kByte : at::kInt; }
// Calls f(out_t{}) with out_t the C++ type of the levels tensor out (uint8_t or int32_t).
template <typename F>
void dispatch_level_type(const at::Tensor& out, const F& f) {
  if (out.scalar_type() == at::kByte)
    f(uint8_t{});
  else
    f(int32_t{});
}

// (rows,) incoming gradient of a row-sum op: contiguous, of the accumulation dtype.
inline void check_row_grad(const at::Tensor& grad, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == like.size(0) && grad.is_contiguous() &&
                  grad.scalar_type() == acc_dtype(like.scalar_type()),
              "fastvae: grad must be a contiguous (rows,) tensor of the accumulation dtype");
  check_same_device(grad, "grad", like, like_name);
}

// The KL ops' operands: mu and logvar, contiguous (rows, cols) matrices of one shape and dtype.
inline void check_kl_operands(const at::Tensor& mu, const at::Tensor& logvar) {
  check_matrix(mu, "mu");
  check_matrix(logvar, "logvar");
  check_same_shape(mu, "mu", logvar, "logvar");
  TORCH_CHECK(mu.scalar_type() == logvar.scalar_type(), "fastvae: mu and logvar must share a dtype");
}

// The kl_normal ops' operands: q's mean and log-variance, contiguous (rows, cols) matrices of one
// shape; the prior's, each (rows / k, cols), broadcast over q's rows; one dtype for all four.
inline void check_kl_normal(const at::Tensor& mu_q, const char* mqn, const at::Tensor& logvar_q, const char* lqn,
                            const at::Tensor& mu_p, const char* mpn, const at::Tensor& logvar_p, const char* lpn) {
  check_matrix(mu_q, mqn);
  check_matrix(logvar_q, lqn);
  check_matrix(mu_p, mpn);
  check_matrix(logvar_p, lpn);
  check_same_shape(mu_q, mqn, logvar_q, lqn);
  const auto t = mu_q.scalar_type();
  TORCH_CHECK(logvar_q.scalar_type() == t && mu_p.scalar_type() == t && logvar_p.scalar_type() == t, "fastvae: ",
              mqn, ", ", lqn, ", ", mpn, " and ", lpn, " must share a dtype, got ", t, ", ", logvar_q.scalar_type(),
              ", ", mu_p.scalar_type(), ", ", logvar_p.scalar_type());
  check_row_broadcast(mu_q, mqn, mu_p, mpn);
  check_row_broadcast(mu_q, mqn, logvar_p, lpn);
}

// mean (rows, D); x and logvar broadcast over its rows; one dtype for all three.
inline void check_gaussian(const at::Tensor& mean, const at::Tensor& x, const at::Tensor& logvar) {
  check_matrix(mean, "mean");
  check_matrix(x, "x");
  check_matrix(logvar, "logvar");
  TORCH_CHECK(x.scalar_type() == mean.scalar_type() && logvar.scalar_type() == mean.scalar_type(),
              "fastvae: mean, x and logvar must share a dtype, got ", mean.scalar_type(), ", ",
              x.scalar_type(), ", ", logvar.scalar_type());
  check_row_broadcast(mean, "mean", x, "x");
  check_row_broadcast(mean, "mean", logvar, "logvar");
}

// z (rows, Z); mu and logvar of one shape, broadcast over z's rows; one dtype for all three.
inline void check_density(const at::Tensor& z, const at::Tensor& mu, const at::Tensor& logvar) {
  check_matrix(z, "z");
  check_matrix(mu, "mu");
  check_matrix(logvar, "logvar");
  check_same_shape(mu, "mu", logvar, "logvar");
  TORCH_CHECK(mu.scalar_type() == z.scalar_type() && logvar.scalar_type() == z.scalar_type(),
              "fastvae: z, mu and logvar must share a dtype");
  check_row_broadcast(z, "z", mu, "mu");
}

inline void check_sampling_params(const at::Tensor& mu, const at::Tensor& logvar) {
  TORCH_CHECK(is_reduced_or_float(mu.scalar_type()), "fastvae: mu must be floating point, got ",
              mu.scalar_type());
  TORCH_CHECK(mu.scalar_type() == logvar.scalar_type(), "fastvae: mu and logvar must share a dtype");
  check_same_shape(mu, "mu", logvar, "logvar");
  TORCH_CHECK(mu.is_contiguous() && logvar.is_contiguous(), "fastvae: mu and logvar must be contiguous");
}

inline void check_sampling_inputs(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& rng_state) {
  check_sampling_params(mu, logvar);
  check_rng_state(rng_state, mu);
}

// The forward sampling ops: checked before the generator is touched, so bad input draws nothing.
inline void check_sampling_call(const at::Tensor& mu, const at::Tensor& logvar, int64_t num_samples,
                                const std::optional<at::Tensor>& rng_state) {
  check_sampling_params(mu, logvar);
  TORCH_CHECK(num_samples >= 1, "fastvae: num_samples must be >= 1, got ", num_samples);
  if (rng_state.has_value() && rng_state->defined()) check_rng_state(*rng_state, mu);
}

// Bernoulli logits (rows, D) and targets x: of the logits' dtype, uint8 or bool (0/1 read as one
// byte per element), 2-D contiguous, broadcast over the logits' rows.
inline void check_bernoulli(const at::Tensor& logits, const at::Tensor& x) {
  check_matrix(logits, "logits");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "fastvae: x must be a contiguous 2-D tensor");
  TORCH_CHECK(x.scalar_type() == logits.scalar_type() || x.scalar_type() == at::kByte ||
                  x.scalar_type() == at::kBool,
              "fastvae: x must have the dtype of logits (", logits.scalar_type(), "), uint8 or bool, got ",
              x.scalar_type());
  check_row_broadcast(logits, "logits", x, "x");
}

// The optional incoming gradient of the KL output of reparameterize_with_kl: mu is then 2-D and
// grad_kl holds one accumulation-dtype entry per row.
inline void check_kl_grad(const std::optional<at::Tensor>& grad_kl, const at::Tensor& mu) {
  if (!grad_kl.has_value() || !grad_kl->defined()) return;
  TORCH_CHECK(mu.dim() == 2, "fastvae: grad_kl needs a 2-D (rows, cols) mu, got ", mu.dim(), "-D");
  check_row_grad(*grad_kl, mu, "mu");
}

// reparameterize_backward: the sampling inputs, the KL output's gradient if any, and grad_z, the
// incoming gradient of z: contiguous (num_samples, *mu.shape), or mu's shape for one sample
// drawn without the sample dim (no view is made for it on every step), of mu's dtype and device.
inline void check_sampling_backward(const at::Tensor& grad_z, const at::Tensor& mu, const at::Tensor& logvar,
                                    const at::Tensor& rng_state, const std::optional<at::Tensor>& grad_kl) {
  check_sampling_inputs(mu, logvar, rng_state);
  check_kl_grad(grad_kl, mu);
  const bool one = grad_z.dim() == mu.dim() && grad_z.sizes() == mu.sizes();
  TORCH_CHECK((one || (grad_z.dim() == mu.dim() + 1 && grad_z.numel() == grad_z.size(0) * mu.numel())) &&
                  grad_z.scalar_type() == mu.scalar_type() && grad_z.is_contiguous(),
              "fastvae: grad_z must be a contiguous (num_samples, *mu.shape) or mu-shaped tensor of mu's dtype");
  check_same_device(grad_z, "grad_z", mu, "mu");
}

// The samples grad_z holds (check_sampling_backward's two shapes).
inline int64_t grad_z_samples(const at::Tensor& grad_z, const at::Tensor& mu) {
  return grad_z.dim() == mu.dim() ? 1 : grad_z.size(0);
}

}  // namespace fastvae
