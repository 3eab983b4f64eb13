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
// overflows for any finite l.
template <typename T>
FV_HD T bernoulli_ll_with_grad(T l, T x, T* grad) {
  const T e = fv_exp(T(0) - fv_abs(l));
  const T r = fv_div(T(1), T(1) + e);
  *grad = x - fv_select_nonneg(l, r, e * r);
  return x * l - fv_max(l, T(0)) - fv_log1p_unit(e);
}

// log N(x | m, e^lv) for one element, given inv_var = e^-lv.
template <typename T>
FV_HD T gaussian_ll(T x, T m, T lv, T inv_var) {
  T d = x - m;
  return T(-0.5) * (T(kLog2Pi) + lv + d * d * inv_var);
}

// d/dm of gaussian_ll = (x - m) / var.
template <typename T>
FV_HD T gaussian_ll_grad_mean(T x, T m, T inv_var) {
  return (x - m) * inv_var;
}

// d/dlv of gaussian_ll = 0.5 * ((x - m)^2 / var - 1).
template <typename T>
FV_HD T gaussian_ll_grad_logvar(T x, T m, T inv_var) {
  T d = x - m;
  return T(0.5) * (d * d * inv_var - T(1));
}

// log N(z | 0, 1).
template <typename T>
FV_HD T standard_normal_ll(T z) {
  return T(-0.5) * (T(kLog2Pi) + z * z);
}

// KL(N(mu, e^lv) || N(0, 1)) for one latent dimension.
template <typename T>
FV_HD T kl_normal(T mu, T lv) {
  return T(0.5) * (fv_exp(lv) + mu * mu - T(1) - lv);
}

// d/dlv of kl_normal = (e^lv - 1) / 2 (d/dmu is mu itself).
template <typename T>
FV_HD T kl_normal_grad_logvar(T lv) {
  return T(0.5) * (fv_exp(lv) - T(1));
}

}  // namespace fastvae
