// Counter-based normal draws shared by the CPU and CUDA sampling kernels.
//
// eps for element i of a sampling call is a pure function of (seed, offset, i), so the backward
// pass regenerates it instead of storing it, and CPU and CUDA draw the same stream:
//   group = i / 4, lane = i % 4
//   r[0..3] = Philox4x32-10(counter = {step_lo, step_hi, sub_lo, sub_hi}, key = {seed_lo, seed_hi})
//     step = offset / 4, sub = group | (offset % 4) << 62
//   (r0, r1) -> Box-Muller -> eps of lanes 0, 1;  (r2, r3) -> lanes 2, 3.
// This is curand's layout, which PyTorch's own CUDA random ops use: curand_init(seed, thread,
// offset) starts thread `thread` at counter {offset / 4 (low 64 bits), thread (high 64 bits)}
// and each curand4 call moves the low 64 bits on by one. A sampling call is group g's first
// curand4 draw of curand_init(seed, g, offset); the CUDA generator reserves 4 offset units (one
// counter step) per call, so no other op of that generator draws counter step offset / 4, and
// the call's bits are its own. Generator offsets are multiples of 4 (torch refuses others); a
// hand-written rng_state with offset % 4 != 0 gets subsequences at 2^62 and up, which no thread
// index reaches, so every (seed, offset) still has its own stream.
#pragma once

#include <cstdint>

#include "vae_math.h"

namespace fastvae {

struct PhiloxState {
  uint64_t seed;
  uint64_t offset;
};

FV_HD void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c[0] = hi1 ^ c[1] ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c[3] ^ k1;
    c[3] = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
}

FV_HD float fv_sqrt(float v) { return ::sqrtf(v); }
FV_HD double fv_sqrt(double v) { return ::sqrt(v); }
FV_HD void fv_sincos_2pi(float u, float* s, float* c) {
  const float a = 6.2831853071795864f * u;
  *s = ::sinf(a);
  *c = ::cosf(a);
}
FV_HD void fv_sincos_2pi(double u, double* s, double* c) {
  const double a = 6.2831853071795864 * u;
  *s = ::sin(a);
  *c = ::cos(a);
}

// The four raw 32-bit outputs of one Philox group.
// The counter step of a call (low 64 bits of the counter) and the subsequence of one of its
// groups (high 64 bits), as in the layout above.
FV_HD uint64_t philox_step(PhiloxState st) { return st.offset >> 2; }
FV_HD uint64_t philox_subsequence(PhiloxState st, uint64_t group) { return group | ((st.offset & 3) << 62); }

FV_HD void philox_group_bits(PhiloxState st, uint64_t group, uint32_t c[4]) {
  const uint64_t step = philox_step(st), sub = philox_subsequence(st, group);
  c[0] = static_cast<uint32_t>(step);
  c[1] = static_cast<uint32_t>(step >> 32);
  c[2] = static_cast<uint32_t>(sub);
  c[3] = static_cast<uint32_t>(sub >> 32);
  philox4x32_10(c, static_cast<uint32_t>(st.seed), static_cast<uint32_t>(st.seed >> 32));
}

// Box-Muller inputs from a pair of outputs: u1 in (0, 1] (never 0, so log(u1) stays finite), u2 in [0, 1).
template <typename T>
FV_HD T philox_u1(uint32_t bits) {
  return (static_cast<T>(bits) + T(1)) * T(2.3283064365386963e-10);
}
template <typename T>
FV_HD T philox_u2(uint32_t bits) {
  return static_cast<T>(bits) * T(2.3283064365386963e-10);
}

// Uniforms of the same stream, for the samplers of discrete data (the discretized_logistic and
// categorical families): uniform i of a call is the 32-bit word i % 4 of group i / 4 (the group's
// counter as above), mapped into the open interval (0, 1), symmetric about 1/2 and exact:
// float takes the top 24 bits k, (k + 1/2) 2^-24; double all 32, (bits + 1/2) 2^-32.
template <typename T>
FV_HD T philox_open_unit(uint32_t bits);
template <>
FV_HD float philox_open_unit<float>(uint32_t bits) {
  return (static_cast<float>(bits >> 8) + 0.5f) * 5.9604644775390625e-8f;
}
template <>
FV_HD double philox_open_unit<double>(uint32_t bits) {
  return (static_cast<double>(bits) + 0.5) * 2.3283064365386963e-10;
}

// The words of a call's stream by flat index, one Philox group computed per group of 4 indices
// in a row (a sampler reads its indices in increasing order).
struct PhiloxWords {
  PhiloxState st;
  uint64_t group = ~uint64_t{0};
  uint32_t c[4] = {0, 0, 0, 0};
  FV_HD explicit PhiloxWords(PhiloxState s) : st(s) {}
  FV_HD uint32_t operator()(uint64_t i) {
    if (i / 4 != group) {
      group = i / 4;
      philox_group_bits(st, group, c);
    }
    return c[i % 4];
  }
};

// The four standard normals of one Philox group, in precision T (float or double):
// (c0, c1) -> lanes 0 (cos) and 1 (sin), (c2, c3) -> lanes 2 and 3.
template <typename T>
FV_HD void philox_normal4(PhiloxState st, uint64_t group, T out[4]) {
  uint32_t c[4];
  philox_group_bits(st, group, c);
  for (int pair = 0; pair < 2; ++pair) {
    const T radius = fv_sqrt(T(-2) * fv_log(philox_u1<T>(c[2 * pair])));
    T s, co;
    fv_sincos_2pi(philox_u2<T>(c[2 * pair + 1]), &s, &co);
    out[2 * pair] = radius * co;
    out[2 * pair + 1] = radius * s;
  }
}

}  // namespace fastvae
