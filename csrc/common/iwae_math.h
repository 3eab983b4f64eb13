// The importance-weighted bound of one example from its K log-weights, shared by the CPU and
// CUDA kernels of fastvae::iwae_bound (csrc/cpu/iwae.cpp, csrc/cuda/iwae.cu).
//
// log_w[k * stride] for k < K are log p(x, z_k) - log q(z_k | x). The column's
//   bound = log (1/K) sum_k exp(log_w_k)     (max-shifted log-sum-exp, minus log K)
//   w_k   = exp(log_w_k - logsumexp(log_w))  (the normalised importance weights)
// written in one call: a pass for the max, one for the sum (in double, whatever K), one writing
// the weights (each exponential divided by that sum). As torch.logsumexp and its gradient: a NaN anywhere makes the bound and every
// weight NaN; a column of -inf has bound -inf and NaN weights; a +inf gives bound +inf.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/vae_math.h"

namespace fastvae {

template <typename scalar_t, typename acc_t>
FV_HD acc_t iwae_column(const scalar_t* log_w, acc_t* weights, int64_t k_count, int64_t stride, acc_t log_k) {
  acc_t m = acc_t(-INFINITY);
  bool nan = false;
  for (int64_t k = 0; k < k_count; ++k) {
    const acc_t v = static_cast<acc_t>(log_w[k * stride]);
    nan = nan || v != v;
    m = v > m ? v : m;
  }
  if (nan) {
    for (int64_t k = 0; k < k_count; ++k) weights[k * stride] = acc_t(NAN);
    return acc_t(NAN);
  }
  // An infinite max is not subtracted (inf - inf): the sum is then 0 (all -inf) or inf.
  const acc_t shift = (m == acc_t(INFINITY) || m == acc_t(-INFINITY)) ? acc_t(0) : m;
  double s = 0;
  for (int64_t k = 0; k < k_count; ++k) s += static_cast<double>(fv_exp(static_cast<acc_t>(log_w[k * stride]) - shift));
  // w_k = e^(log_w_k - shift) / s: the same exponentials, divided by the sum in double, so the
  // weights carry no rounding of the log-sum-exp itself (|lse| ~ 100 nats: 8e-6 in float32).
  // As torch's logsumexp gradient e^(log_w - lse): all -inf (s = 0) gives NaN weights; a +inf
  // (s = inf) gives NaN to the +inf samples and 0 to the others.
  const double inv_s = 1.0 / s;
  const bool finite = s > 0 && s < INFINITY;
  for (int64_t k = 0; k < k_count; ++k) {
    const acc_t v = static_cast<acc_t>(log_w[k * stride]);
    const double w = finite ? static_cast<double>(fv_exp(v - shift)) * inv_s : s == 0 || v == acc_t(INFINITY) ? NAN : 0.0;
    weights[k * stride] = static_cast<acc_t>(w);
  }
  return static_cast<acc_t>(::log(s) + static_cast<double>(shift) - static_cast<double>(log_k));
}

}  // namespace fastvae
