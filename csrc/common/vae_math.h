// Per-element math shared by the CPU and CUDA kernels.
//
// Every formula is a template over the arithmetic type T so that the CPU kernels can run it on
// at::vec::Vectorized<float/double> and on plain scalars for row tails, and the CUDA kernels on
// float/double registers. The elementary functions (fv_exp, fv_log1p_unit, ...) are overloaded for
// scalars here and for Vectorized in csrc/cpu/vec_math.h, which must be included before this file.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FV_HD __host__ __device__ __forceinline__
#else
#define FV_HD inline
#endif

namespace fastvae {

constexpr double kLog2Pi = 1.8378770664093453;  // log(2*pi)
// The sampler's backward pass sums the gradients of K samples per element: blocks of this many
// samples in the accumulation type, the block sums in double. Float32 sums of 10^6 samples one
// after another are off by ~1e-5 relative; this keeps them near float32's own rounding.
constexpr int kSampleBlock = 16;

FV_HD float fv_exp(float v) { return ::expf(v); }
FV_HD double fv_exp(double v) { return ::exp(v); }
FV_HD float fv_log(float v) { return ::logf(v); }
FV_HD double fv_log(double v) { return ::log(v); }
// log(1 + e) for e in [0, 1]; the CPU kernels overload it with a cheaper series for float vectors.
FV_HD float fv_log1p_unit(float e) { return ::log1pf(e); }
FV_HD double fv_log1p_unit(double e) { return ::log1p(e); }
FV_HD float fv_abs(float v) { return ::fabsf(v); }
FV_HD double fv_abs(double v) { return ::fabs(v); }
FV_HD float fv_max(float a, float b) { return a > b ? a : b; }
FV_HD double fv_max(double a, double b) { return a > b ? a : b; }
// a / b via the reciprocal of exp: sigmoid needs 1 / (1 + e) for vectors too.
FV_HD float fv_div(float a, float b) { return a / b; }
FV_HD double fv_div(double a, double b) { return a / b; }

// c >= 0 ? a : b, elementwise for vectors.
FV_HD float fv_select_nonneg(float c, float a, float b) { return c >= 0.f ? a : b; }
FV_HD double fv_select_nonneg(double c, double a, double b) { return c >= 0.0 ? a : b; }

// x*log(sigmoid(l)) + (1-x)*log(1-sigmoid(l)) == x*l - softplus(l), and its derivative
// x - sigmoid(l), from one exp: with e = exp(-|l|) in (0, 1] and r = 1/(1+e) = sigmoid(|l|),
// softplus(l) = max(l, 0) + log1p(e) and sigmoid(l) = r (l >= 0) or e*r (l < 0). Nothing
// overflows for any finite l. x*l - max(l, 0) is taken as (x - 1)*l (l >= 0) or x*l (l < 0),
// so that l = +inf gives -inf (x < 1) rather than inf - inf; l = -inf gives -inf (x > 0). Only
// 0 * inf stays NaN (x exactly 1 at l = +inf, exactly 0 at l = -inf), as in torch.
template <typename T>
FV_HD T bernoulli_ll_with_grad(T l, T x, T* grad) {
  const T e = fv_exp(T(0) - fv_abs(l));
  const T r = fv_div(T(1), T(1) + e);
  *grad = x - fv_select_nonneg(l, r, e * r);
  return fv_select_nonneg(l, x - T(1), x) * l - fv_log1p_unit(e);
}

// The Gaussian and KL terms below take e^(-lv/2) (the inverse standard deviation) or e^(lv/2)
// instead of e^(-lv) or e^lv, and multiply in an order that keeps every intermediate within a
// factor of the result: e^-lv alone overflows float32 at lv < -88.7 and (x - m)^2 e^-lv before
// its half does, while s = (x - m) e^(-lv/2), the residual in standard deviations, stays finite
// wherever the result is. An incoming gradient g is multiplied in before the large factors.
template <typename T>
FV_HD T inv_std(T lv) { return fv_exp(T(-0.5) * lv); }
template <typename T>
FV_HD T std_dev(T lv) { return fv_exp(T(0.5) * lv); }

// log N(x | m, e^lv) for one element, given h = inv_std(lv).
template <typename T>
FV_HD T gaussian_ll(T x, T m, T lv, T h) {
  const T s = (x - m) * h;
  return T(-0.5) * (T(kLog2Pi) + lv) - (T(0.5) * s) * s;
}

// f * gaussian_ll with f multiplied in before the square: a mean over rows (f = 1/rows) stays
// finite wherever it is, though a row's sum or one term may exceed the type's range. f = 1 gives
// gaussian_ll's value.
template <typename T>
FV_HD T gaussian_ll(T x, T m, T lv, T h, T f) {
  const T s = (x - m) * h;
  return f * (T(-0.5) * (T(kLog2Pi) + lv)) - ((T(0.5) * f) * s) * s;
}

// g * d/dm of gaussian_ll = g (x - m) / var, given h = inv_std(lv).
template <typename T>
FV_HD T gaussian_ll_grad_mean(T x, T m, T h, T g) {
  return (g * ((x - m) * h)) * h;
}

// g * d/dlv of gaussian_ll = g ((x - m)^2 / var - 1) / 2, given h = inv_std(lv).
template <typename T>
FV_HD T gaussian_ll_grad_logvar(T x, T m, T h, T g) {
  const T s = (x - m) * h;
  const T half_g = T(0.5) * g;
  return (half_g * s) * s - half_g;
}

// log N(z | 0, 1).
template <typename T>
FV_HD T standard_normal_ll(T z) {
  return T(-0.5) * (T(kLog2Pi) + z * z);
}

// KL(N(mu, e^lv) || N(0, 1)) for one latent dimension: (e^lv + mu^2 - 1 - lv) / 2.
template <typename T>
FV_HD T kl_std_normal(T mu, T lv) {
  const T sd = std_dev(lv);
  return (T(0.5) * sd) * sd + T(0.5) * ((mu * mu - T(1)) - lv);
}

// g * d/dlv of kl_std_normal = g (e^lv - 1) / 2 (d/dmu is mu itself).
template <typename T>
FV_HD T kl_std_normal_grad_logvar(T lv, T g) {
  const T sd = std_dev(lv);
  const T half_g = T(0.5) * g;
  return (half_g * sd) * sd - half_g;
}

// KL(N(mq, e^lq) || N(mp, e^lp)) for one latent dimension (the kl_normal op family):
//   (e^(lq - lp) - 1 - (lq - lp)) / 2 + s^2 / 2,  s = (mq - mp) e^(-lp/2).
// The variance ratio comes from the difference of the log-variances, as the square of
// r = e^((lq - lp)/2) halved first, and s is the mean gap in the prior's standard deviations, so
// nothing overflows where the KL itself is finite (e^-lp alone overflows float32 at lp < -88.7,
// and e^(lq - lp) before its half does).
template <typename T>
FV_HD T kl_normal_term(T mq, T lq, T mp, T lp) {
  const T d = lq - lp;
  const T r = std_dev(d);
  const T s = (mq - mp) * inv_std(lp);
  return ((T(0.5) * r) * r + (T(0.5) * s) * s) - T(0.5) * (T(1) + d);
}

// g times the four partial derivatives of kl_normal_term:
//   d/dmq = (mq - mp) e^-lp = s e^(-lp/2), d/dmp = -d/dmq,
//   d/dlq = (e^(lq - lp) - 1) / 2,          d/dlp = -d/dlq - s^2 / 2.
// g is multiplied in before the large factors (as in gaussian_ll_grad_mean).
template <typename T>
struct KlNormalGrads {
  T mu_q, logvar_q, mu_p, logvar_p;
};
template <typename T>
FV_HD KlNormalGrads<T> kl_normal_term_grads(T mq, T lq, T mp, T lp, T g) {
  const T h = inv_std(lp);
  const T r = std_dev(lq - lp);
  const T s = (mq - mp) * h;
  const T half_g = T(0.5) * g;
  const T dlq = (half_g * r) * r - half_g;
  const T dmq = (g * s) * h;
  return {dmq, dlq, T(0) - dmq, (T(0) - dlq) - (half_g * s) * s};
}

}  // namespace fastvae
