// Vectorized overloads of the elementary functions used by csrc/common/vae_math.h, plus the
// load/store helpers that widen bf16/fp16/uint8/bool inputs to the accumulation type.
// Include this instead of vae_math.h in CPU kernels: the overloads must precede the templates.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace fastvae {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// exp_u20 (2 ulp) costs about half of the 1-ulp exp; the row sums cannot see the difference.
template <typename T>
inline Vec<T> fv_exp(const Vec<T>& v) { return v.exp_u20(); }
// log(1 + e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3], by the odd series of
// atanh to s^13 (truncation < 5e-9 relative): a third of the cost of Sleef's log1p for float.
inline Vec<float> fv_log1p_unit(const Vec<float>& e) {
  const Vec<float> s = e / (Vec<float>(2.f) + e);
  const Vec<float> s2 = s * s;
  Vec<float> p(1.f / 13.f);
  p = at::vec::fmadd(p, s2, Vec<float>(1.f / 11.f));
  p = at::vec::fmadd(p, s2, Vec<float>(1.f / 9.f));
  p = at::vec::fmadd(p, s2, Vec<float>(1.f / 7.f));
  p = at::vec::fmadd(p, s2, Vec<float>(1.f / 5.f));
  p = at::vec::fmadd(p, s2, Vec<float>(1.f / 3.f));
  p = at::vec::fmadd(p, s2, Vec<float>(1.f));
  return Vec<float>(2.f) * s * p;
}
inline Vec<double> fv_log1p_unit(const Vec<double>& e) { return e.log1p(); }
template <typename T>
inline Vec<T> fv_abs(const Vec<T>& v) { return v.abs(); }
template <typename T>
inline Vec<T> fv_max(const Vec<T>& a, const Vec<T>& b) { return at::vec::maximum(a, b); }
template <typename T>
inline Vec<T> fv_div(const Vec<T>& a, const Vec<T>& b) { return a / b; }
template <typename T>
inline Vec<T> fv_select_nonneg(const Vec<T>& c, const Vec<T>& a, const Vec<T>& b) {
  return Vec<T>::blendv(b, a, c >= Vec<T>(T(0)));
}

// Loads Vec<acc_t>::size() elements of type S starting at p, widened to acc_t.
template <typename acc_t, typename S>
inline Vec<acc_t> load_widened(const S* p) {
  if constexpr (std::is_same_v<S, acc_t>) {
    return Vec<acc_t>::loadu(p);
  } else {
    alignas(64) acc_t buf[Vec<acc_t>::size()];
    for (int i = 0; i < Vec<acc_t>::size(); ++i) buf[i] = static_cast<acc_t>(p[i]);
    return Vec<acc_t>::loadu(buf);
  }
}

// Stores v narrowed to S at p (Vec<acc_t>::size() elements).
template <typename acc_t, typename S>
inline void store_narrowed(S* p, const Vec<acc_t>& v) {
  if constexpr (std::is_same_v<S, acc_t>) {
    v.store(p);
  } else {
    alignas(64) acc_t buf[Vec<acc_t>::size()];
    v.store(buf);
    for (int i = 0; i < Vec<acc_t>::size(); ++i) p[i] = static_cast<S>(buf[i]);
  }
}

template <typename acc_t>
inline acc_t vec_sum(const Vec<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](const Vec<acc_t>& a, const Vec<acc_t>& b) { return a + b; },
                                        v);
}

}  // namespace fastvae

#include "common/vae_math.h"
