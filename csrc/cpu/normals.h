// The CPU sampling kernels' draw: the normals eps of the Philox stream of csrc/common/philox.h in
// tiles (vectorised on AVX2), z = mu + e^(logvar/2) * eps over a run, the per-sample gradient
// sums of the backward pass, and the (seed, offset) state of a call. Shared by
// csrc/cpu/sampling.cpp and csrc/cpu/kl_normal.cpp (the sample with its KL against a prior), so
// that both draw the same eps for the same state.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <mutex>
#include <type_traits>

#include "cpu/vec_math.h"  // must precede philox.h (vector overloads)
#include "common/philox.h"

namespace fastvae {
namespace cpu {
namespace draw {

inline PhiloxState read_state(const at::Tensor& rng_state) {
  const int64_t* s = rng_state.const_data_ptr<int64_t>();
  return {static_cast<uint64_t>(s[0]), static_cast<uint64_t>(s[1])};
}

// eps comes in blocks of kGroups consecutive Philox groups (4 * kGroups values in stream order).
// Same stream as philox_normal4 (and the CUDA kernels) up to the last bits of log, sin and cos.
constexpr int64_t kGroups = 16;
constexpr int64_t kBlockEps = 4 * kGroups;
// eps per tile: the sampling loops fill a tile of eps, then run the arithmetic over it with
// contiguous vector loads; 8 KiB of float eps stay in L1 beside the operands.
constexpr int64_t kTile = 2048;
static_assert(kTile % kBlockEps == 0, "tiles hold whole blocks");
// Elements per parallel task, at least. A draw costs ~1.7 ns per element on one core (Philox
// rounds, log, sincos), ~15x a plain elementwise op, so a task of two tiles (~7 us) already pays
// for the thread hand-off that ATen's 32 768-element grain is sized for.
constexpr int64_t kSampleGrainElems = 2 * kTile;

#if FASTVAE_X86_AVX2
// Philox4x32-10 of the 8 * kSets groups group0, group0 + 1, ... at once: word w of group
// group0 + 8 s + l in lane l of c[s][w]. _mm256_mul_epu32 multiplies the even 32-bit lanes into
// 64-bit products; the odd lanes go through a shift, and blends put the halves back in place.
// The kSets independent chains hide the multiplies' latency.
template <int kSets>
inline void philox8(PhiloxState st, uint64_t group0, __m256i c[kSets][4]) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  // Counter {step (the call's), subsequence (the group's)}: common/philox.h's layout.
  const uint64_t step = philox_step(st);
  for (int s = 0; s < kSets; ++s) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int l = 0; l < 8; ++l) {
      const uint64_t sub = philox_subsequence(st, group0 + 8 * s + l);
      lo[l] = static_cast<uint32_t>(sub);
      hi[l] = static_cast<uint32_t>(sub >> 32);
    }
    c[s][0] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
    c[s][1] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
    c[s][2] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    c[s][3] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
  }
  uint32_t k0 = static_cast<uint32_t>(st.seed), k1 = static_cast<uint32_t>(st.seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0)), key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int s = 0; s < kSets; ++s) {
      __m256i* w = c[s];
      const __m256i pe0 = _mm256_mul_epu32(w[0], m0), po0 = _mm256_mul_epu32(_mm256_srli_epi64(w[0], 32), m0);
      const __m256i pe1 = _mm256_mul_epu32(w[2], m1), po1 = _mm256_mul_epu32(_mm256_srli_epi64(w[2], 32), m1);
      const __m256i lo0 = _mm256_blend_epi32(pe0, _mm256_slli_epi64(po0, 32), 0xAA);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(pe0, 32), po0, 0xAA);
      const __m256i lo1 = _mm256_blend_epi32(pe1, _mm256_slli_epi64(po1, 32), 0xAA);
      const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(pe1, 32), po1, 0xAA);
      w[0] = _mm256_xor_si256(_mm256_xor_si256(hi1, w[1]), key0);
      w[1] = lo1;
      w[2] = _mm256_xor_si256(_mm256_xor_si256(hi0, w[3]), key1);
      w[3] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// log(u) for u in [2^-32, 1] (normal floats): u = 2^e m with m in [sqrt(1/2), sqrt(2)), then
// log(m) = 2 atanh(s), s = (m - 1) / (m + 1) in [-0.172, 0.172], by its odd series to s^11
// (truncation < 3e-10 relative). A couple of ulp, like logf; cheaper than Sleef's general log.
inline __m256 log_unit(__m256 u) {
  const __m256i t = _mm256_sub_epi32(_mm256_castps_si256(u), _mm256_set1_epi32(0x3F3504F3));
  const __m256 e = _mm256_cvtepi32_ps(_mm256_srai_epi32(t, 23));
  const __m256 m = _mm256_castsi256_ps(
      _mm256_add_epi32(_mm256_and_si256(t, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F3504F3)));
  const __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.f));  // exact: m is within a factor 2 of 1
  const __m256 s = _mm256_div_ps(f, _mm256_add_ps(f, _mm256_set1_ps(2.f)));
  const __m256 s2 = _mm256_mul_ps(s, s);
  __m256 p = _mm256_set1_ps(2.f / 11.f);
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(2.f / 9.f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(2.f / 7.f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(2.f / 5.f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(2.f / 3.f));
  // 2 s + s^3 p = log(m); then + e ln 2 with ln 2 in two parts (e ln2_hi is exact for |e| < 2^8).
  const __m256 log_m = _mm256_fmadd_ps(_mm256_mul_ps(s, s2), p, _mm256_add_ps(s, s));
  const __m256 lo = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), log_m);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), lo);
}

// static_cast<float>(uint32_t) for 8 lanes, correctly rounded: both 16-bit halves convert
// exactly and the one rounding is the fused multiply-add's.
inline __m256 u32_to_float(__m256i b) {
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 16));
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(0xFFFF)));
  return _mm256_fmadd_ps(hi, _mm256_set1_ps(65536.f), lo);
}

// sin and cos of a in [0, 2*pi]: a - q*pi/2 by Cody-Waite (the first step is exact for these a),
// Taylor polynomials on [-pi/4, pi/4] (truncation < 2e-9), then the quadrant's swap and signs.
// Within a couple of ulp of sinf/cosf of the same float a, which is what the CUDA kernel takes.
inline void sincos_0_2pi(__m256 a, __m256* s, __m256* c) {
  const __m256 q = _mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(0.63661977236758134f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(q, _mm256_set1_ps(1.57079637050628662f), a);
  r = _mm256_fnmadd_ps(q, _mm256_set1_ps(-4.37113900018624283e-8f), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 ps = _mm256_set1_ps(2.7557319223985893e-6f);
  ps = _mm256_fmadd_ps(ps, r2, _mm256_set1_ps(-1.9841269841269841e-4f));
  ps = _mm256_fmadd_ps(ps, r2, _mm256_set1_ps(8.3333333333333333e-3f));
  ps = _mm256_fmadd_ps(ps, r2, _mm256_set1_ps(-1.6666666666666667e-1f));
  const __m256 sin_r = _mm256_fmadd_ps(_mm256_mul_ps(r, r2), ps, r);
  __m256 pc = _mm256_set1_ps(-2.7557319223985891e-7f);
  pc = _mm256_fmadd_ps(pc, r2, _mm256_set1_ps(2.4801587301587302e-5f));
  pc = _mm256_fmadd_ps(pc, r2, _mm256_set1_ps(-1.3888888888888889e-3f));
  pc = _mm256_fmadd_ps(pc, r2, _mm256_set1_ps(4.1666666666666667e-2f));
  pc = _mm256_fmadd_ps(pc, r2, _mm256_set1_ps(-0.5f));
  const __m256 cos_r = _mm256_fmadd_ps(pc, r2, _mm256_set1_ps(1.f));
  const __m256i qi = _mm256_cvtps_epi32(q);
  const __m256 swap = _mm256_castsi256_ps(
      _mm256_cmpeq_epi32(_mm256_and_si256(qi, _mm256_set1_epi32(1)), _mm256_set1_epi32(1)));
  const __m256i two = _mm256_set1_epi32(2);
  const __m256 sign_s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(qi, two), 30));
  const __m256 sign_c =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(qi, _mm256_set1_epi32(1)), two), 30));
  *s = _mm256_xor_ps(_mm256_blendv_ps(sin_r, cos_r, swap), sign_s);
  *c = _mm256_xor_ps(_mm256_blendv_ps(cos_r, sin_r, swap), sign_c);
}

// The 4 * kGroups float normals of groups group0 .. group0 + kGroups - 1 to out (unaligned), in
// stream order.
inline void normals_block_avx2(PhiloxState st, int64_t group0, float* out) {
  constexpr int kSets = kGroups / 8;
  __m256i c[kSets][4];
  philox8<kSets>(st, static_cast<uint64_t>(group0), c);
  const __m256 scale = _mm256_set1_ps(2.3283064365386963e-10f), one = _mm256_set1_ps(1.f);
  const __m256 two_pi = _mm256_set1_ps(6.2831853071795864f), minus_two = _mm256_set1_ps(-2.f);
  for (int set = 0; set < kSets; ++set) {
    __m256 v[4];  // lane l: eps 4l + k of the set in v[k]
    for (int pair = 0; pair < 2; ++pair) {
      const __m256 u1 = _mm256_mul_ps(_mm256_add_ps(u32_to_float(c[set][2 * pair]), one), scale);
      const __m256 u2 = _mm256_mul_ps(u32_to_float(c[set][2 * pair + 1]), scale);
      const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(minus_two, log_unit(u1)));
      __m256 sn, cs;
      sincos_0_2pi(_mm256_mul_ps(two_pi, u2), &sn, &cs);
      v[2 * pair] = _mm256_mul_ps(radius, cs);
      v[2 * pair + 1] = _mm256_mul_ps(radius, sn);
    }
    // 4 x 8 transpose: group l's four values are consecutive in the stream.
    const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    const __m256 g04 = _mm256_shuffle_ps(t0, t2, 0x44), g15 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 g26 = _mm256_shuffle_ps(t1, t3, 0x44), g37 = _mm256_shuffle_ps(t1, t3, 0xEE);
    float* o = out + 32 * set;
    _mm256_storeu_ps(o, _mm256_permute2f128_ps(g04, g15, 0x20));
    _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(g26, g37, 0x20));
    _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(g04, g15, 0x31));
    _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(g26, g37, 0x31));
  }
}
#endif

// The normals of kGroups consecutive Philox groups in stream order. Float on AVX2: all in
// registers (above). Otherwise the integer rounds (8 groups per vector on AVX2), then the
// Box-Muller transform on Vectorized<acc_t>, which is most of the cost.
template <typename acc_t>
inline void normals_block(PhiloxState st, int64_t group0, acc_t* out) {
#if FASTVAE_X86_AVX2
  if constexpr (std::is_same_v<acc_t, float>) {
    normals_block_avx2(st, group0, out);
    return;
  }
#endif
  constexpr int64_t kPairs = 2 * kGroups;
  alignas(64) acc_t u1[kPairs], u2[kPairs], rad[kPairs], sn[kPairs], cs[kPairs];
#if FASTVAE_X86_AVX2
  static_assert(kGroups % 8 == 0, "philox8 draws 8 groups per set");
  __m256i c[kGroups / 8][4];
  philox8<kGroups / 8>(st, static_cast<uint64_t>(group0), c);
  alignas(32) uint32_t bits[kGroups / 8][4][8];
  for (int64_t set = 0; set < kGroups / 8; ++set)
    for (int w = 0; w < 4; ++w) _mm256_store_si256(reinterpret_cast<__m256i*>(bits[set][w]), c[set][w]);
  for (int64_t g = 0; g < kGroups; ++g) {
    const uint32_t* b0 = &bits[g / 8][0][g % 8];
    u1[2 * g] = philox_u1<acc_t>(b0[0]);
    u2[2 * g] = philox_u2<acc_t>(b0[8]);
    u1[2 * g + 1] = philox_u1<acc_t>(b0[16]);
    u2[2 * g + 1] = philox_u2<acc_t>(b0[24]);
  }
#else
  for (int64_t g = 0; g < kGroups; ++g) {
    uint32_t c[4];
    philox_group_bits(st, static_cast<uint64_t>(group0 + g), c);
    u1[2 * g] = philox_u1<acc_t>(c[0]);
    u2[2 * g] = philox_u2<acc_t>(c[1]);
    u1[2 * g + 1] = philox_u1<acc_t>(c[2]);
    u2[2 * g + 1] = philox_u2<acc_t>(c[3]);
  }
#endif
  constexpr int64_t V = Vec<acc_t>::size();
  static_assert(kPairs % V == 0, "a block must hold whole vectors");
  for (int64_t p = 0; p < kPairs; p += V) {
    const auto angle = Vec<acc_t>(acc_t(6.2831853071795864)) * Vec<acc_t>::loadu(u2 + p);
    (Vec<acc_t>(acc_t(-2)) * Vec<acc_t>::loadu(u1 + p).log()).sqrt().store(rad + p);
    angle.sin().store(sn + p);
    angle.cos().store(cs + p);
  }
  for (int64_t q = 0; q < kPairs; ++q) {
    out[2 * q] = rad[q] * cs[q];
    out[2 * q + 1] = rad[q] * sn[q];
  }
}

// eps of the flat indices [i0, i0 + count) into dst: whole blocks straight into dst, a partial
// first or last block through a scratch block.
template <typename acc_t>
inline void fill_eps(PhiloxState st, int64_t i0, int64_t count, acc_t* dst) {
  alignas(64) acc_t tmp[kBlockEps];
  const int64_t end = i0 + count;
  for (int64_t i = i0; i < end;) {
    const int64_t base = (i / 4) * 4;
    if (i == base && end - i >= kBlockEps) {
      normals_block<acc_t>(st, i / 4, dst + (i - i0));
      i += kBlockEps;
      continue;
    }
    normals_block<acc_t>(st, i / 4, tmp);
    const int64_t stop = std::min(end, base + kBlockEps);
    std::copy(tmp + (i - base), tmp + (stop - base), dst + (i - i0));
    i = stop;
  }
}

// z = mu + e^(logvar/2) * eps over len contiguous elements.
template <typename acc_t, typename scalar_t>
inline void sample_run(scalar_t* z, const scalar_t* m, const scalar_t* lv, const acc_t* eps, int64_t len) {
  constexpr int64_t V = Vec<acc_t>::size();
  const Vec<acc_t> half(acc_t(0.5));
  int64_t j = 0;
  for (; j + V <= len; j += V) {
    const auto sigma = std_dev(load_widened<acc_t>(lv + j));
    store_narrowed<acc_t>(z + j, at::vec::fmadd(sigma, Vec<acc_t>::loadu(eps + j), load_widened<acc_t>(m + j)));
  }
  for (; j < len; ++j)
    z[j] = static_cast<scalar_t>(static_cast<acc_t>(m[j]) + std_dev(static_cast<acc_t>(lv[j])) * eps[j]);
}

// sg (+)= g, sge (+)= g * eps over len elements (first: assign, for the first sample of a block
// of kSampleBlock samples; the caller adds each block's sums into double, see vae_math.h).
template <typename acc_t, typename scalar_t>
inline void accumulate_run(acc_t* sg, acc_t* sge, const scalar_t* g, const acc_t* eps, int64_t len, bool first) {
  constexpr int64_t V = Vec<acc_t>::size();
  int64_t j = 0;
  for (; j + V <= len; j += V) {
    const auto gv = load_widened<acc_t>(g + j), ev = Vec<acc_t>::loadu(eps + j);
    if (first) {
      gv.store(sg + j);
      (gv * ev).store(sge + j);
    } else {
      (Vec<acc_t>::loadu(sg + j) + gv).store(sg + j);
      at::vec::fmadd(gv, ev, Vec<acc_t>::loadu(sge + j)).store(sge + j);
    }
  }
  for (; j < len; ++j) {
    const acc_t gj = static_cast<acc_t>(g[j]);
    sg[j] = first ? gj : sg[j] + gj;
    sge[j] = first ? gj * eps[j] : sge[j] + gj * eps[j];
  }
}

// z = mu + e^(logvar/2) * eps for `samples` draws of eps (z of (samples, n) elements, mu and
// logvar of n): tiles of kTile flat (sample, element) indices, no split below kSampleGrainElems
// elements; a tile's runs contiguous in mu split at sample boundaries. After each tile, the same
// task calls on_tile(i0, len) with the tile's flat range. Every sampler draws z this way, so that
// the same state gives the same z to the last bit (a run's vector or scalar path included).
template <typename acc_t, typename scalar_t, typename OnTile>
inline void draw_z(const scalar_t* m, const scalar_t* lv, scalar_t* zp, int64_t n, int64_t samples, PhiloxState st,
                   const OnTile& on_tile) {
  const int64_t total = n * samples;
  const int64_t tiles = (total + kTile - 1) / kTile;
  at::parallel_for(0, tiles, kSampleGrainElems / kTile, [&](int64_t tb, int64_t te) {
    alignas(64) acc_t eps[kTile];
    for (int64_t t = tb; t < te; ++t) {
      const int64_t i0 = t * kTile, len = std::min(kTile, total - i0);
      fill_eps<acc_t>(st, i0, len, eps);
      int64_t p = i0 % n;
      for (int64_t k = 0; k < len;) {
        const int64_t run = std::min(len - k, n - p);
        sample_run<acc_t>(zp + i0 + k, m + p, lv + p, eps + k, run);
        k += run;
        p = p + run == n ? 0 : p + run;
      }
      on_tile(i0, len);
    }
  });
}

// The sums over samples sg = sum_k g_k and sge = sum_k g_k eps_k of the len elements of mu at
// p0 .. p0 + len - 1, each sample's gradient g + k * n + p0 (n = mu.numel()): eps drawn again,
// samples summed in order in blocks of kSampleBlock in acc_t, the blocks in double, so the result
// is the same for any thread count. The wide buffers are scratch of len doubles.
template <typename acc_t, typename scalar_t>
inline void sample_grad_sums(PhiloxState st, const scalar_t* g, int64_t n, int64_t samples, int64_t p0, int64_t len,
                             acc_t* eps, acc_t* sg, acc_t* sge, double* wide_sg, double* wide_sge) {
  // One block of samples (1 .. kSampleBlock, a training step's case): its acc_t sums are the
  // result already, which the double buffers would only round-trip.
  const bool wide = samples < 1 || samples > kSampleBlock;
  if (wide) {
    std::fill(wide_sg, wide_sg + len, 0.0);
    std::fill(wide_sge, wide_sge + len, 0.0);
  }
  for (int64_t k = 0; k < samples; ++k) {
    fill_eps<acc_t>(st, k * n + p0, len, eps);
    accumulate_run<acc_t>(sg, sge, g + k * n + p0, eps, len, k % kSampleBlock == 0);
    if (wide && ((k + 1) % kSampleBlock == 0 || k + 1 == samples)) {
      for (int64_t q = 0; q < len; ++q) {
        wide_sg[q] += static_cast<double>(sg[q]);
        wide_sge[q] += static_cast<double>(sge[q]);
      }
    }
  }
  if (!wide) return;
  for (int64_t q = 0; q < len; ++q) {
    sg[q] = static_cast<acc_t>(wide_sg[q]);
    sge[q] = static_cast<acc_t>(wide_sge[q]);
  }
}

// The backward passes' tiles of mu's n elements: each tile's sample sums (sample_grad_sums, over
// the samples' gradients g), then finish(p0, len, sg, sge) in the same task.
template <typename acc_t, typename scalar_t, typename Finish>
inline void sample_grad_tiles(PhiloxState st, const scalar_t* g, int64_t n, int64_t samples, const Finish& finish) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, kSampleGrainElems / (kTile * std::max<int64_t>(samples, 1)));
  at::parallel_for(0, tiles, grain, [&](int64_t tb, int64_t te) {
    alignas(64) acc_t eps[kTile], sg[kTile], sge[kTile];
    alignas(64) double wide_sg[kTile], wide_sge[kTile];
    for (int64_t t = tb; t < te; ++t) {
      const int64_t p0 = t * kTile, len = std::min(kTile, n - p0);
      sample_grad_sums<acc_t>(st, g, n, samples, p0, len, eps, sg, sge, wide_sg, wide_sge);
      finish(p0, len, static_cast<const acc_t*>(sg), static_cast<const acc_t*>(sge));
    }
  });
}

// This call's Philox (seed, offset): the given rng_state's, or a fresh seed from the generator
// (offset 0: every call has its own key), as a new 2-element tensor the backward pass reads.
inline at::Tensor sampling_state(const at::Tensor& like, std::optional<at::Generator> generator,
                                 const std::optional<at::Tensor>& rng_state) {
  auto state = at::empty({2}, like.options().dtype(at::kLong));
  int64_t* out = state.mutable_data_ptr<int64_t>();
  if (rng_state.has_value() && rng_state->defined()) {
    out[0] = rng_state->const_data_ptr<int64_t>()[0];
    out[1] = rng_state->const_data_ptr<int64_t>()[1];
    return state;
  }
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  out[0] = static_cast<int64_t>(gen->random64());
  out[1] = 0;
  return state;
}

}  // namespace draw
}  // namespace cpu
}  // namespace fastvae
