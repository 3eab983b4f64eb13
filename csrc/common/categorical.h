// The categorical op family (a K-way softmax per subpixel, e.g. K = 256 grey levels): argument
// checks and per-element math shared by the CPU and CUDA kernels.
//
// logits (B, K, C, P): any strides (the class dim where F.cross_entropy has it, the spatial dims
// merged into P; a channels-last decoder output has them strided, e.g. K or C innermost);
// x (B, C * P): contiguous integer levels, uint8 or int64, subpixel s = (channel s / P, position
// s % P). ll[b] = sum_s logits[b, x[b, s], s] - logsumexp_k logits[b, k, s], and with
// compute_grad the gradient onehot(x) - softmax, written in the same pass.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "common/checks.h"
#include "common/vae_math.h"
#include "ops.h"

namespace fastvae {

inline void check_categorical(const at::Tensor& logits, const at::Tensor& x) {
  TORCH_CHECK_VALUE(logits.dim() == 4, "fastvae: logits must be 4-D (B, K, C, P), got ", logits.dim(), "-D");
  TORCH_CHECK_VALUE(is_reduced_or_float(logits.scalar_type()),
                    "fastvae: logits must be float64, float32, bfloat16 or float16, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) >= 1, "fastvae: logits must have at least one class (dim 1)");
  TORCH_CHECK_VALUE(x.scalar_type() == at::kByte || x.scalar_type() == at::kLong,
                    "fastvae: x must hold integer levels as uint8 or int64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.is_contiguous(), "fastvae: x must be a contiguous 2-D (B, C * P) tensor");
  check_same_device(logits, "logits", x, "x");
  TORCH_CHECK_VALUE(x.size(0) == logits.size(0) && x.size(1) == logits.size(2) * logits.size(3), "fastvae: x has shape ",
                    x.sizes(), " but logits has shape ", logits.sizes(), " (x must be (B, C * P) for logits (B, K, C, P))");
}

// The sampler's logits (B, K, C, P) of any strides; its levels are (B, C * P), uint8 for up to
// 256 classes, int32 above.
inline void check_categorical_sample(const at::Tensor& logits, const std::optional<at::Tensor>& rng_state) {
  TORCH_CHECK_VALUE(logits.dim() == 4, "fastvae: logits must be 4-D (B, K, C, P), got ", logits.dim(), "-D");
  TORCH_CHECK_VALUE(is_reduced_or_float(logits.scalar_type()),
                    "fastvae: logits must be float64, float32, bfloat16 or float16, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) >= 1, "fastvae: logits must have at least one class (dim 1)");
  TORCH_CHECK_VALUE(logits.size(1) <= (int64_t{1} << 31) - 1, "fastvae: logits have too many classes for int32 levels");
  if (rng_state.has_value() && rng_state->defined()) check_rng_state(*rng_state, logits, "logits");
}

// One step of the running log-sum-exp over classes: (m, s) = (max so far, sum of exp(v - m)).
// One exp per class; -inf logits add nothing, NaN ones make s NaN.
template <typename T>
FV_HD void lse_step(T v, T& m, T& s) {
  if (v > m) {
    s = s * fv_exp(m - v) + T(1);
    m = v;
  } else {
    s += fv_exp(v - m);
  }
}

// An integer level of x: a class index in [0, K), else the subpixel's result is NaN.
template <typename L>
FV_HD bool level_ok(L v, int64_t classes) {
  return static_cast<int64_t>(v) >= 0 && static_cast<int64_t>(v) < classes;
}

// A draw of a class by the inverse CDF at u in (0, 1) (the sampler, the likelihood's twin): one
// walk over the K logits for the running max m and sum se of exp(l - m) (lse_step), a second
// accumulating exp(l_k - m) until it passes u se. Rounding can leave the second sum a few ulp short
// of se; then the draw is the last class of nonzero weight. -1 when the weights are not a
// distribution (a NaN logit, every logit -inf, two +inf ones); one +inf logit is drawn surely.
template <typename T, typename Load>
FV_HD int64_t categorical_draw(const Load& load, int64_t classes, T u) {
  const T inf = std::numeric_limits<T>::infinity();
  T m = T(0) - inf, se = T(0);
  int64_t last = -1, top_inf = -1;
  for (int64_t k = 0; k < classes; ++k) {
    const T v = load(k);
    lse_step(v, m, se);
    if (v > T(0) - inf) last = k;
    if (v == inf && top_inf < 0) top_inf = k;
  }
  if (top_inf >= 0) return se == T(1) ? top_inf : -1;  // exp(inf - inf): NaN for a second +inf
  if (!(se > T(0)) || !(se < inf)) return -1;
  const T target = u * se;
  T cum = T(0);
  for (int64_t k = 0; k < classes; ++k) {
    cum += fv_exp(load(k) - m);
    if (cum > target) return k;
  }
  return last;
}

// The kernels' entry point below the schema (fastvae::categorical_log_likelihood is grad_scale 1):
// the gradient written is grad_scale * (onehot(x) - softmax), so that the image ELBO
// (common/image_elbo.h) gets d loss / d logits from the same pass, with no second one to scale it.
namespace cpu {
TensorPair categorical_log_likelihood_scaled(const at::Tensor& logits, const at::Tensor& x, bool compute_grad,
                                             double grad_scale);
}  // namespace cpu
namespace cuda {
TensorPair categorical_log_likelihood_scaled(const at::Tensor& logits, const at::Tensor& x, bool compute_grad,
                                             double grad_scale);
}  // namespace cuda

}  // namespace fastvae
