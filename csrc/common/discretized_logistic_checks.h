// Argument checks and the data's levels for the discretized_logistic op family, shared by the CPU
// and CUDA entry points (host code). The Python layer (fastvae/functional/discretized_logistic.py)
// raises ValueErrors naming the argument first; these guard the raw ops.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "common/checks.h"
#include "common/discretized_logistic.h"

namespace fastvae {

// Data x: integer levels (uint8, int32, int64) or values in [-1, 1] (float32, float64), rounded
// to the nearest level.
inline bool is_level_dtype(at::ScalarType t) {
  return t == at::kByte || t == at::kInt || t == at::kLong || t == at::kFloat || t == at::kDouble;
}

// The kernels' code for x's dtype (read_level in common/discretized_logistic.h).
inline int level_code(at::ScalarType t) {
  switch (t) {
    case at::kByte: return kLevelU8;
    case at::kInt: return kLevelI32;
    case at::kLong: return kLevelI64;
    case at::kFloat: return kLevelF32;
    default: return kLevelF64;
  }
}

// A floating (B, K, S) operand of any strides.
inline void check_pixels(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 3, "fastvae: ", name, " must be 3-D (batch, channels, pixels), got ", t.dim(), "-D");
  TORCH_CHECK(is_reduced_or_float(t.scalar_type()), "fastvae: ", name,
              " must be float64, float32, bfloat16 or float16, got ", t.scalar_type());
}

inline void check_levels(const at::Tensor& x, const at::Tensor& like, const char* like_name, int64_t bits) {
  TORCH_CHECK(x.dim() == 3, "fastvae: x must be 3-D (batch, channels, pixels), got ", x.dim(), "-D");
  TORCH_CHECK(is_level_dtype(x.scalar_type()), "fastvae: x must be uint8, int32, int64 (levels) or float32, "
              "float64 (values in [-1, 1]), got ", x.scalar_type());
  TORCH_CHECK(bits >= 1 && bits <= 16, "fastvae: bits must be in [1, 16], got ", bits);
  check_same_device(x, "x", like, like_name);
  TORCH_CHECK(x.size(0) == like.size(0) && x.size(2) == like.size(2), "fastvae: x has shape ", x.sizes(), " but ",
              like_name, " has shape ", like.sizes(), " (batch and pixels must match)");
}

// The mixture's params (B, 10 M or 3 M, S) against x (B, C, S), C = 3 or 1.
inline void check_mix_logistic(const at::Tensor& params, const at::Tensor& x, int64_t num_mixtures, int64_t bits) {
  check_pixels(params, "params");
  check_levels(x, params, "params", bits);
  const int64_t C = x.size(1);
  TORCH_CHECK(C == 1 || C == 3, "fastvae: x must have 1 or 3 channels, got ", C);
  TORCH_CHECK(num_mixtures >= 1, "fastvae: num_mixtures must be >= 1, got ", num_mixtures);
  const int64_t K = (C == 3 ? 10 : 3) * num_mixtures;
  TORCH_CHECK(params.size(1) == K, "fastvae: params must have ", K, " channels for ", C, " data channels and ",
              num_mixtures, " mixtures, got ", params.size(1));
}

// One logistic: mean and log_scale (B, C, S), x (B, C, S).
inline void check_logistic(const at::Tensor& mean, const at::Tensor& log_scale, const at::Tensor& x, int64_t bits) {
  check_pixels(mean, "mean");
  check_pixels(log_scale, "log_scale");
  check_same_shape(mean, "mean", log_scale, "log_scale");
  TORCH_CHECK(mean.scalar_type() == log_scale.scalar_type(), "fastvae: mean and log_scale must share a dtype");
  check_levels(x, mean, "mean", bits);
  TORCH_CHECK(x.size(1) == mean.size(1), "fastvae: x has shape ", x.sizes(), " but mean has shape ", mean.sizes());
}

// An output for d ll / d t written by the kernels: t's own strides when t is dense with its
// batch dim outermost (channels-last included), so that each row is one contiguous block that
// elbo_rescale can scale; contiguous otherwise (an expanded or sliced t).
inline at::Tensor grad_like(const at::Tensor& t) {
  if (t.is_non_overlapping_and_dense() && (t.size(0) == 1 || t.stride(0) * t.size(0) == t.numel()))
    return at::empty_like(t);
  return at::empty(t.sizes(), t.options());
}

// The mixture sampler's params (B, 10 M or 3 M, S): returns C (3 or 1).
inline int64_t check_mix_sample(const at::Tensor& params, int64_t num_mixtures, int64_t bits,
                                const std::optional<at::Tensor>& rng_state) {
  check_pixels(params, "params");
  TORCH_CHECK(bits >= 1 && bits <= 16, "fastvae: bits must be in [1, 16], got ", bits);
  TORCH_CHECK(num_mixtures >= 1, "fastvae: num_mixtures must be >= 1, got ", num_mixtures);
  const int64_t K = params.size(1);
  TORCH_CHECK(K == 10 * num_mixtures || K == 3 * num_mixtures, "fastvae: params must have 10 M (3 channels) or ",
              "3 M (1 channel) channels for M = ", num_mixtures, " mixtures, got ", K);
  if (rng_state.has_value() && rng_state->defined()) check_rng_state(*rng_state, params, "params");
  return K == 10 * num_mixtures ? 3 : 1;
}

// One logistic's sampler: mean and log_scale (B, C, S) of one dtype.
inline void check_logistic_sample(const at::Tensor& mean, const at::Tensor& log_scale, int64_t bits,
                                  const std::optional<at::Tensor>& rng_state) {
  check_pixels(mean, "mean");
  check_pixels(log_scale, "log_scale");
  check_same_shape(mean, "mean", log_scale, "log_scale");
  TORCH_CHECK(mean.scalar_type() == log_scale.scalar_type(), "fastvae: mean and log_scale must share a dtype");
  TORCH_CHECK(bits >= 1 && bits <= 16, "fastvae: bits must be in [1, 16], got ", bits);
  if (rng_state.has_value() && rng_state->defined()) check_rng_state(*rng_state, mean, "mean");
}

}  // namespace fastvae
