// Per-element math of the continuous Bernoulli log-likelihood (the continuous_bernoulli op
// family), shared by the CPU kernels (on Vectorized lanes and scalars) and the CUDA kernels.
//
// For x in [0, 1] and a logit l (lambda = sigmoid(l)), the Bernoulli term plus the log-normaliser:
//   log p(x | l) = x l - softplus(l) + log C(l),   C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda).
// With 1 - 2 sigmoid(l) = -tanh(l / 2) and atanh(-tanh(l / 2)) = -l / 2, C = l / tanh(l / 2); with
// softplus(l) = l / 2 + log(2 cosh(l / 2)) the two cancel to one even function of l:
//   log p(x | l) = (x - 1/2) l - g(l),   g(l) = log(sinh(l / 2) / (l / 2)) >= 0,
//   d/dl = (x - 1/2) - g'(l),           g'(l) = coth(l / 2) / 2 - 1 / l.
// Evaluated this way nothing cancels but the data's own (x - 1/2) l: summing softplus and log C
// separately loses their common log 2 to rounding in every element, a bias that a row of 10^5
// float32 terms near lambda = 1/2 turns into a relative error above 1e-5.
// g is taken from its Taylor series in t = l^2 below |l| = kCbSeriesBelow (radius of
// convergence 2 pi; ten terms leave < 1e-18 at |l| = 1):
//   g = sum_n B_2n t^n / (2n (2n)!),   g' = l sum_n B_2n t^(n-1) / (2n)!   (B_2n Bernoulli numbers),
// and above it, for a = |l|, e = exp(-a), from sinh(a / 2) = e^(a / 2) (1 - e) / 2:
//   g = a / 2 + log(1 - e) - log a,    g' = sign(l) (1 / 2 + e / (1 - e) - 1 / a).
// Both agree to rounding at the switch, so the value and the gradient are continuous there.
// Requires fv_log for T (vae_math.h has the scalar ones; CPU kernels declare the vector one).
#pragma once

#include "common/vae_math.h"

namespace fastvae {

constexpr double kCbSeriesBelow = 1.0;

// Coefficients of g in t = l^2: B_2n / (2n (2n)!), n = 1 .. 10.
constexpr double kCbG1 = 1.0 / 24.0;
constexpr double kCbG2 = -1.0 / 2880.0;
constexpr double kCbG3 = 1.0 / 181440.0;
constexpr double kCbG4 = -1.0 / 9676800.0;
constexpr double kCbG5 = 1.0 / 479001600.0;
constexpr double kCbG6 = -691.0 / 15692092416000.0;
constexpr double kCbG7 = 1.0 / 1046139494400.0;
constexpr double kCbG8 = -3617.0 / 170729965486080000.0;
constexpr double kCbG9 = 43867.0 / 91963695909076992000.0;
constexpr double kCbG10 = -174611.0 / 16057153253965824000000.0;

// g(l) = log(sinh(l / 2) / (l / 2)) and g'(l), from the series or the closed form.
template <typename T>
FV_HD T cb_log_sinhc(T l, T* grad) {
  const T a = fv_abs(l);
  const T above = a - T(kCbSeriesBelow);  // >= 0: the closed form
  // Series at t clamped to the switch point, so that the other branch's lanes stay finite.
  const T t = fv_select_nonneg(above, T(kCbSeriesBelow * kCbSeriesBelow), l * l);
  const T p = T(kCbG1) + t * (T(kCbG2) + t * (T(kCbG3) + t * (T(kCbG4) + t * (T(kCbG5) + t * (T(kCbG6) +
              t * (T(kCbG7) + t * (T(kCbG8) + t * (T(kCbG9) + t * T(kCbG10)))))))));
  const T dp = T(2 * kCbG1) + t * (T(4 * kCbG2) + t * (T(6 * kCbG3) + t * (T(8 * kCbG4) + t * (T(10 * kCbG5) +
               t * (T(12 * kCbG6) + t * (T(14 * kCbG7) + t * (T(16 * kCbG8) + t * (T(18 * kCbG9) +
               t * T(20 * kCbG10)))))))));
  // Closed form at a clamped to the switch point, likewise.
  const T ac = fv_max(a, T(kCbSeriesBelow));
  const T e = fv_exp(T(0) - ac);
  const T one_minus_e = T(1) - e;
  const T closed = (T(0.5) * ac + fv_log(one_minus_e)) - fv_log(ac);
  const T dabs = (T(0.5) + fv_div(e, one_minus_e)) - fv_div(T(1), ac);
  *grad = fv_select_nonneg(above, fv_select_nonneg(l, dabs, T(0) - dabs), l * dp);
  return fv_select_nonneg(above, closed, t * p);
}

// (x - 1/2) l - g(l) and its derivative in l, (x - 1/2) - g'(l).
template <typename T>
FV_HD T continuous_bernoulli_ll_with_grad(T l, T x, T* grad) {
  T dg;
  const T g = cb_log_sinhc(l, &dg);
  const T xc = x - T(0.5);
  *grad = xc - dg;
  return xc * l - g;
}

}  // namespace fastvae
