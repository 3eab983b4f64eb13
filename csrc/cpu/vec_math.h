// Vectorized overloads of the elementary functions used by csrc/common/vae_math.h, plus the
// load/store helpers that widen bf16/fp16/uint8/bool inputs to the accumulation type.
// Include this instead of vae_math.h in CPU kernels: the overloads must precede the templates.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace fastvae {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// exp_u20 (2 ulp) costs about half of the 1-ulp exp; the row sums cannot see the difference.
// Its range reduction turns a NaN into +-inf or 0 (AVX2 and AVX-512 alike), so NaN lanes are
// put back: a NaN log-variance must come out as NaN, as from std::exp and CUDA's expf.
template <typename T>
inline Vec<T> fv_exp(const Vec<T>& v) { return Vec<T>::blendv(v.exp_u20(), v, v.isnan()); }
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

// The conversions below need the ISA at compile time and ATen's Vectorized<float> of the same
// width (CPU_CAPABILITY_AVX2: 8 lanes from __m256; CPU_CAPABILITY_AVX512: 16 lanes from __m512);
// other builds use the element-by-element loops. FASTVAE_X86_AVX2: the AVX2 integer intrinsics
// the sampler's Philox rounds use, present in both x86 builds.
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#define FASTVAE_VEC_AVX512 1
#define FASTVAE_VEC_AVX2 0
#elif defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__F16C__)
#define FASTVAE_VEC_AVX512 0
#define FASTVAE_VEC_AVX2 1
#else
#define FASTVAE_VEC_AVX512 0
#define FASTVAE_VEC_AVX2 0
#endif
#if FASTVAE_VEC_AVX2 || FASTVAE_VEC_AVX512
#include <immintrin.h>
#endif
#if (FASTVAE_VEC_AVX2 || FASTVAE_VEC_AVX512) && defined(__FMA__) && defined(__F16C__)
#define FASTVAE_X86_AVX2 1
#else
#define FASTVAE_X86_AVX2 0
#endif

#if FASTVAE_VEC_AVX2 || FASTVAE_VEC_AVX512
namespace detail {
#if FASTVAE_VEC_AVX2
using FloatReg = __m256;
// 8 bf16 / fp16 / bytes at p widened to float in registers: bf16 is the high half of a float,
// fp16 has F16C, bytes (uint8 and bool targets) go through int32.
inline __m256 widen(const c10::BFloat16* p) {
  const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}
inline __m256 widen(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 widen(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// float -> bf16 rounded to nearest even, NaN -> 0x7FC0: the same bits as c10::BFloat16(float).
inline void narrow(c10::BFloat16* p, __m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
// float -> fp16 rounded to nearest even (F16C), as c10::Half(float) for every non-NaN value.
inline void narrow(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
#else
using FloatReg = __m512;
// The same conversions for 16 lanes; narrowing ends in one vpmovdw instead of pack + extract.
inline __m512 widen(const c10::BFloat16* p) {
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}
inline __m512 widen(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 widen(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline void narrow(c10::BFloat16* p, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
inline void narrow(c10::Half* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
#endif
inline FloatReg widen(const bool* p) { return widen(reinterpret_cast<const uint8_t*>(p)); }

template <typename S>
constexpr bool kWidens = std::is_same_v<S, c10::BFloat16> || std::is_same_v<S, c10::Half> ||
                         std::is_same_v<S, uint8_t> || std::is_same_v<S, bool>;
template <typename S>
constexpr bool kNarrows = std::is_same_v<S, c10::BFloat16> || std::is_same_v<S, c10::Half>;
}  // namespace detail
#endif

// Loads Vec<acc_t>::size() elements of type S starting at p, widened to acc_t.
template <typename acc_t, typename S>
inline Vec<acc_t> load_widened(const S* p) {
  if constexpr (std::is_same_v<S, acc_t>) {
    return Vec<acc_t>::loadu(p);
  } else {
#if FASTVAE_VEC_AVX2 || FASTVAE_VEC_AVX512
    if constexpr (std::is_same_v<acc_t, float> && detail::kWidens<S>) {
      static_assert(Vec<float>::size() * 4 == sizeof(detail::FloatReg), "one register per Vectorized<float>");
      return Vec<float>(detail::widen(p));
    }
#endif
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
#if FASTVAE_VEC_AVX2 || FASTVAE_VEC_AVX512
    if constexpr (std::is_same_v<acc_t, float> && detail::kNarrows<S>) {
      detail::narrow(p, static_cast<detail::FloatReg>(v));
      return;
    }
#endif
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
