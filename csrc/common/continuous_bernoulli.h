// Per-element math of the continuous Bernoulli log-likelihood (the continuous_bernoulli op
// family), shared by the CPU kernels (on Vectorized lanes and scalars) and the CUDA kernels.
//
// For x in [0, 1] and a logit l (lambda = sigmoid(l)):
//   log p(x | l) = x l - softplus(l) + log C(l),   C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda).
// With 1 - 2 sigmoid(l) = -tanh(l / 2) and atanh(-tanh(l / 2)) = -l / 2 the normaliser is
//   C(l) = l / tanh(l / 2)  (even in l, C(0) = 2),
// and its log, for a = |l|, e = exp(-a) (tanh(a / 2) = (1 - e) / (1 + e)):
//   log C = log a + log(1 + e) - log(1 - e),
// with derivative d log C / dl = 1 / l - 1 / sinh(l) = sign(l) (1 / a - 2 e / (1 - e^2)).
// Near l = 0 both forms cancel (log a against log(1 - e)), so below |l| = kCbSeriesBelow the
// Taylor series in l are used, with t = l^2 (radius of convergence |l| = pi):
//   log C = log 2 + sum_n c_n t^n,       c_n = 2 (2^(2n-1) - 1) B_2n / ((2n)! 2n),
//   d log C / dl = l sum_n 2n c_n t^(n-1),
// B_2n the Bernoulli numbers. Seven terms at |l| < 1/4 leave a truncation under 1e-19 of the
// result: the series and the closed form agree to rounding at the switch, so the value and the
// gradient are continuous there. Requires fv_log (and the functions of vae_math.h) for T.
#pragma once

#include "common/vae_math.h"

namespace fastvae {

constexpr double kCbSeriesBelow = 0.25;
constexpr double kLog2 = 0.6931471805599453;

// Coefficients c_1 .. c_7 of log(C(l) / 2) in t = l^2 (see above).
constexpr double kCbC1 = 1.0 / 12.0;
constexpr double kCbC2 = -7.0 / 1440.0;
constexpr double kCbC3 = 31.0 / 90720.0;
constexpr double kCbC4 = -127.0 / 4838400.0;
constexpr double kCbC5 = 73.0 / 34214400.0;
constexpr double kCbC6 = -1414477.0 / 7846046208000.0;
constexpr double kCbC7 = 8191.0 / 523069747200.0;

// log C(l) and its derivative, from the series (|l| < kCbSeriesBelow) or the closed form.
template <typename T>
FV_HD T cb_log_normalizer(T l, T* grad) {
  const T a = fv_abs(l);
  const T above = a - T(kCbSeriesBelow);  // >= 0: the closed form
  // Series: t clamped so that lanes of the other branch stay finite.
  const T t = fv_select_nonneg(above, T(kCbSeriesBelow * kCbSeriesBelow), l * l);
  const T p = T(kCbC1) + t * (T(kCbC2) + t * (T(kCbC3) + t * (T(kCbC4) + t * (T(kCbC5) +
              t * (T(kCbC6) + t * T(kCbC7))))));
  const T dp = T(2 * kCbC1) + t * (T(4 * kCbC2) + t * (T(6 * kCbC3) + t * (T(8 * kCbC4) + t * (T(10 * kCbC5) +
               t * (T(12 * kCbC6) + t * T(14 * kCbC7))))));
  const T series = T(kLog2) + t * p;
  const T dseries = l * dp;
  // Closed form at a clamped to the switch point, so that the other branch's lanes stay finite.
  const T ac = fv_max(a, T(kCbSeriesBelow));
  const T e = fv_exp(T(0) - ac);
  const T one_minus_e = T(1) - e;
  const T closed = (fv_log(ac) + fv_log1p_unit(e)) - fv_log(one_minus_e);
  const T dclosed_abs = fv_div(T(1), ac) - fv_div(T(2) * e, one_minus_e * (T(1) + e));
  const T dclosed = fv_select_nonneg(l, dclosed_abs, T(0) - dclosed_abs);
  *grad = fv_select_nonneg(above, dclosed, dseries);
  return fv_select_nonneg(above, closed, series);
}

// x l - softplus(l) + log C(l) and its derivative in l, x - sigmoid(l) + d log C / dl.
template <typename T>
FV_HD T continuous_bernoulli_ll_with_grad(T l, T x, T* grad) {
  T db, dc;
  const T b = bernoulli_ll_with_grad(l, x, &db);
  const T c = cb_log_normalizer(l, &dc);
  *grad = db + dc;
  return b + c;
}

}  // namespace fastvae
