// Per-element math of the discretized_logistic op family (one logistic, and the NVAE / PixelCNN++
// mixture of logistics, over the bins of 2^bits levels), shared by the CPU and CUDA kernels.
//
// Templates over T: float / double scalars (CUDA, and these overloads) and, on the CPU,
// at::vec::Vectorized<float / double> (csrc/cpu/discretized_logistic.cpp declares dl_* overloads
// for them before including this file). vae_math.h provides fv_exp, fv_log1p_unit, fv_abs,
// fv_max, fv_div and fv_select_nonneg.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/vae_math.h"

namespace fastvae {

// Log-scales are clamped below at this value (no gradient under it), as PixelCNN++ and NVAE do.
constexpr double kLogisticMinLogScale = -7.0;
constexpr double kLn2 = 0.6931471805599453;

FV_HD float dl_log(float v) { return ::logf(v); }
FV_HD double dl_log(double v) { return ::log(v); }
FV_HD float dl_log1p(float v) { return ::log1pf(v); }
FV_HD double dl_log1p(double v) { return ::log1p(v); }
FV_HD float dl_expm1(float v) { return ::expm1f(v); }
FV_HD double dl_expm1(double v) { return ::expm1(v); }
FV_HD float dl_tanh(float v) { return ::tanhf(v); }
FV_HD double dl_tanh(double v) { return ::tanh(v); }

// The log-mass of one bin of a logistic in standardised units and its partial derivatives.
// c = (x - mean) e^-s is the bin centre, hs = h e^-s its half-width (h = 1 / (2^bits - 1)), so
// the bin is [b, a] = [c - hs, c + hs]. `up` >= 0 when the bin has an upper edge (every level but
// the top one; the top bin is [b, inf)), `down` >= 0 when it has a lower edge (every level but 0;
// bin 0 is (-inf, a]). The mass of an interior bin is exact in every regime:
//   sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - e^-(a - b)),  a - b = 2 hs,
// taken as log sigmoid(a) + log sigmoid(-b) + log1mexp(2 hs): each term is accurate in both tails
// (no difference of two probabilities, no density-at-centre approximation, no clamp), and a - b
// comes from hs itself, not from a difference of a and b.
template <typename T>
struct BinLogMass {
  T ll;   // log P(bin)
  T dc;   // d ll / d c
  T dhs;  // d ll / d hs
};

template <typename T>
FV_HD BinLogMass<T> logistic_bin_log_mass(T c, T hs, T up, T down) {
  const T zero(0), one(1);
  const T a = c + hs, b = c - hs;
  // log sigmoid(a) = min(a, 0) - log1p(e^-|a|); sigmoid(-a) = e^-|a| / (1 + e^-|a|) (a >= 0) or
  // 1 / (1 + e^-|a|) (a < 0). Likewise log sigmoid(-b) and sigmoid(b).
  const T ea = fv_exp(zero - fv_abs(a)), ra = fv_div(one, one + ea);
  const T eb = fv_exp(zero - fv_abs(b)), rb = fv_div(one, one + eb);
  const T log_sig_a = (a - fv_max(a, zero)) - fv_log1p_unit(ea);
  const T log_sig_neg_b = (zero - fv_max(b, zero)) - fv_log1p_unit(eb);
  const T sig_neg_a = fv_select_nonneg(a, ea * ra, ra);
  const T sig_b = fv_select_nonneg(b, rb, eb * rb);
  // log(1 - e^-d), d = 2 hs > 0: log(-expm1(-d)) for d <= ln 2, log1p(-e^-d) above; and
  // d/dd = e^-d / (1 - e^-d).
  const T d = hs + hs;
  const T em = fv_exp(zero - d);
  const T small = T(kLn2) - d;  // >= 0: d <= ln 2
  const T q = fv_select_nonneg(small, zero - dl_expm1(zero - d), one - em);
  const T log1mexp = fv_select_nonneg(small, dl_log(q), dl_log1p(zero - em));
  const T inv_expm1 = fv_div(em, q);
  // Both edges: the min over the two flags is >= 0.
  const T both = fv_select_nonneg(up, down, up);
  const T ga = fv_select_nonneg(up, sig_neg_a, zero);
  const T gb = fv_select_nonneg(down, sig_b, zero);
  BinLogMass<T> out;
  out.ll = (fv_select_nonneg(up, log_sig_a, zero) + fv_select_nonneg(down, log_sig_neg_b, zero)) +
           fv_select_nonneg(both, log1mexp, zero);
  out.dc = ga - gb;
  out.dhs = (ga + gb) + fv_select_nonneg(both, (inv_expm1 + inv_expm1), zero);
  return out;
}

// One logistic's log-mass at the bin of data value x (in [-1, 1]) given its mean and raw
// log-scale ls (clamped below at kLogisticMinLogScale), with the derivatives for the mean and
// for ls (zero under the clamp). h is the bin's half-width.
template <typename T>
struct LogisticTerm {
  T ll, d_mean, d_log_scale;
};

template <typename T>
FV_HD LogisticTerm<T> logistic_term(T x, T mean, T ls, T h, T up, T down) {
  const T lo(kLogisticMinLogScale);
  const T s = fv_select_nonneg(lo - ls, lo, ls);  // a NaN ls stays NaN
  const T inv_s = fv_exp(T(0) - s);
  const T c = (x - mean) * inv_s, hs = h * inv_s;
  const BinLogMass<T> m = logistic_bin_log_mass(c, hs, up, down);
  LogisticTerm<T> out;
  out.ll = m.ll;
  out.d_mean = (T(0) - m.dc) * inv_s;
  // s scales c and hs by e^-s: d/ds = -(c dc + hs dhs); zero at and under the clamp (ls <= -7,
  // as torch.clamp's gradient).
  const T d_s = T(0) - (c * m.dc + hs * m.dhs);
  out.d_log_scale = fv_select_nonneg(lo - ls, T(0), d_s);
  return out;
}

// The value in [-1, 1] of level v of top + 1 levels: 2 v / top - 1.
FV_HD double level_value(int64_t v, int64_t top) { return 2.0 * static_cast<double>(v) / static_cast<double>(top) - 1.0; }

// x's dtype, for read_level.
enum LevelCode : int { kLevelU8 = 0, kLevelI32 = 1, kLevelI64 = 2, kLevelF32 = 3, kLevelF64 = 4 };

// The level of element `offset` of x (levels 0 .. top, or values in [-1, 1] rounded to the
// nearest level), or -1 when it is out of range (or NaN).
FV_HD int64_t read_level(const void* x, int code, int64_t offset, int64_t top) {
  int64_t v;
  if (code == kLevelU8) {
    v = static_cast<const uint8_t*>(x)[offset];
  } else if (code == kLevelI32) {
    v = static_cast<const int32_t*>(x)[offset];
  } else if (code == kLevelI64) {
    v = static_cast<const int64_t*>(x)[offset];
  } else {
    const double f = code == kLevelF32 ? static_cast<double>(static_cast<const float*>(x)[offset])
                                       : static_cast<const double*>(x)[offset];
    const double u = ::nearbyint((f + 1.0) * 0.5 * static_cast<double>(top));
    if (!(u >= 0.0 && u <= static_cast<double>(top))) return -1;
    v = static_cast<int64_t>(u);
  }
  return (v >= 0 && v <= top) ? v : -1;
}

// ---------------------------------------------------------------- the mixture (NVAE layout)
// params channels of one pixel: M mixture logits, then per data channel c a block of M means,
// M log-scales and (C = 3) M coupling coefficients: (B, 10 M, ...) for C = 3, (B, 3 M, ...) for
// C = 1. Green's mean adds tanh(coef of red's block) x_red, blue's adds tanh(coef of green's
// block) x_red + tanh(coef of blue's block) x_green, with the data's values.
FV_HD int64_t mix_block(int64_t c, int64_t M, int64_t C) { return M + c * (C == 3 ? 3 : 2) * M; }

// Component m of the mixture at one pixel: its log-softmax-free weight logit plus the sum of its
// channels' bin log-masses, and the derivatives of that sum for each parameter it read (the
// coupling ones for the raw coefficients, through tanh).
template <typename T>
struct MixComponent {
  T total;                            // logit_m + sum_c ll_c
  T d_mean[3], d_log_scale[3], d_coef[3];
};

// load(k) returns channel k of params at the pixel; x[c], up[c], down[c] the data's values and
// bin-edge flags per channel.
template <typename T, typename Load>
FV_HD MixComponent<T> mix_component(const Load& load, int64_t m, int64_t M, int64_t C, const T* x, const T* up,
                                    const T* down, T h) {
  MixComponent<T> out;
  out.total = load(m);
  T t[3], dt[3];  // tanh of the coupling coefficients and 1 - tanh^2
  if (C == 3) {
    for (int64_t k = 0; k < 3; ++k) {
      t[k] = dl_tanh(load(mix_block(k, M, C) + 2 * M + m));
      dt[k] = T(1) - t[k] * t[k];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const int64_t blk = mix_block(c, M, C);
    T mean = load(blk + m);
    if (C == 3 && c == 1) mean = mean + t[0] * x[0];
    if (C == 3 && c == 2) mean = (mean + t[1] * x[0]) + t[2] * x[1];
    const LogisticTerm<T> term = logistic_term(x[c], mean, load(blk + M + m), h, up[c], down[c]);
    out.total = out.total + term.ll;
    out.d_mean[c] = term.d_mean;
    out.d_log_scale[c] = term.d_log_scale;
  }
  if (C == 3) {
    out.d_coef[0] = out.d_mean[1] * x[0] * dt[0];
    out.d_coef[1] = out.d_mean[2] * x[0] * dt[1];
    out.d_coef[2] = out.d_mean[2] * x[1] * dt[2];
  }
  return out;
}

// ---------------------------------------------------------------- sampling (the ops' twins)
// The level of a sampled value y: y clipped to [-1, 1] and rounded to the nearest level, i.e. the
// level whose bin (the likelihood's: [x - h, x + h], the edge levels open outwards) holds y;
// -1 for a NaN y.
template <typename T>
FV_HD int64_t value_level(T y, int64_t top) {
  const T t = (y + T(1)) * T(0.5) * static_cast<T>(top);
  if (!(t == t)) return -1;
  if (t <= T(0)) return 0;
  if (t >= static_cast<T>(top)) return top;
  return static_cast<int64_t>(t + T(0.5));  // t > 0: truncation is floor
}

// A logistic draw by its inverse CDF at u in (0, 1): mean + e^s (log u - log(1 - u)), the raw
// log-scale ls clamped below at kLogisticMinLogScale as in the likelihood (NaN stays NaN).
template <typename T>
FV_HD T logistic_draw(T mean, T ls, T u) {
  const T lo(kLogisticMinLogScale);
  const T s = fv_select_nonneg(lo - ls, lo, ls);
  return mean + fv_exp(s) * (dl_log(u) - dl_log1p(T(0) - u));
}

// One pixel of the mixture (the layout of mix_component): the component by Gumbel-max over the
// M logits, logit_m - log(-log u_m) with uniforms 0 .. M - 1, then channel c's level from a
// logistic draw with uniform M + c, its mean coupled (C = 3) through tanh with the level values
// 2 v / top - 1 already drawn for the earlier channels, exactly as the likelihood couples the
// data's. load(k) returns channel k of params at the pixel, uniform(j) the pixel's j-th uniform.
// Writes the C levels to v; all -1 when a logit or a draw is NaN.
template <typename T, typename Load, typename Uniform>
FV_HD void mix_sample(const Load& load, const Uniform& uniform, int64_t M, int64_t C, int64_t top, int64_t* v) {
  int64_t pick = 0;
  T best(0);
  bool bad = false;
  for (int64_t m = 0; m < M; ++m) {
    const T g = load(m) - dl_log(T(0) - dl_log(uniform(m)));
    bad = bad || !(g == g);
    if (m == 0 || g > best) best = g, pick = m;
  }
  T xv[3];
  for (int64_t c = 0; c < C; ++c) {
    const int64_t blk = mix_block(c, M, C);
    T mean = load(blk + pick);
    if (C == 3 && c == 1) mean = mean + dl_tanh(load(mix_block(0, M, C) + 2 * M + pick)) * xv[0];
    if (C == 3 && c == 2)
      mean = (mean + dl_tanh(load(mix_block(1, M, C) + 2 * M + pick)) * xv[0]) +
             dl_tanh(load(mix_block(2, M, C) + 2 * M + pick)) * xv[1];
    v[c] = value_level(logistic_draw(mean, load(blk + M + pick), uniform(M + c)), top);
    bad = bad || v[c] < 0;
    xv[c] = static_cast<T>(level_value(v[c] < 0 ? 0 : v[c], top));
  }
  if (bad)
    for (int64_t c = 0; c < C; ++c) v[c] = -1;
}

}  // namespace fastvae
