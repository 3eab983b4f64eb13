// Loop skeletons shared by the CPU kernels. Each row is walked with Vectorized<acc_t>; a row
// tail is one more full vector ending at the row's end when the row (chunk) has one, else scalar.
// So vec_fn may run twice on an element: it must only read its inputs and store values that
// depend on nothing else (no accumulation into outputs). Work is split into (row, chunk) tasks
// whose boundaries depend only on the shape, so every row sum has a fixed order (deterministic
// whatever the thread count), and nothing is split below kGrainElems elements, where a thread
// hand-off costs more than it saves.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/vec_math.h"

namespace fastvae {

// Elements per parallel task, at least (ATen's grain for elementwise loops).
constexpr int64_t kGrainElems = 32768;
// Columns per task of for_repeat_tiles.
constexpr int64_t kRepeatBlock = 64;
// Rows longer than this are cut into chunks of this many columns, so that a few long rows still
// use every thread. A multiple of every vector width.
constexpr int64_t kRowChunk = 65536;

// Rows per parallel task: enough columns that a task is worth a thread hand-off.
inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(cols, 1));
}

namespace detail {

inline int64_t row_chunks(int64_t cols) { return cols > kRowChunk ? (cols + kRowChunk - 1) / kRowChunk : 1; }

// Per-lane double sums of Vec<acc_t> values, added up in a fixed order at the end. For float the
// lanes are widened in registers, so a short row costs a few instructions here, not one scalar
// conversion and add per lane.
template <typename acc_t>
struct LaneSums {
  static constexpr int64_t V = Vec<acc_t>::size();
  double wide[V] = {};
  void add(const Vec<acc_t>& v) {
    alignas(64) acc_t lanes[V];
    v.store(lanes);
    for (int64_t k = 0; k < V; ++k) wide[k] += static_cast<double>(lanes[k]);
  }
  double total() const {
    double s = 0;
    for (int64_t k = 0; k < V; ++k) s += wide[k];
    return s;
  }
};
#if FASTVAE_VEC_AVX512
template <>
struct LaneSums<float> {
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  void add(const Vec<float>& v) {
    const __m512 f = v;
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(f)));
    hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(f, 1)));
  }
  double total() const { return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)); }
};
#elif FASTVAE_VEC_AVX2
template <>
struct LaneSums<float> {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  void add(const Vec<float>& v) {
    const __m256 f = v;
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
  }
  double total() const {
    const __m256d s = _mm256_add_pd(lo, hi);
    const __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
  }
};
#endif

// Sum of f over columns [j0, j1) of row r (j0 a multiple of V), in double for float: per-lane
// float partial sums over blocks of kBlock columns (two accumulators, for instruction-level
// parallelism) are flushed into per-lane double sums, so the float error stays that of a
// kBlock/(2V)-term sum however long the row (a two-level cascade, as ATen's sum does).
template <typename acc_t, typename VecFn, typename ScalarFn>
double range_sum(int64_t r, int64_t j0, int64_t j1, int64_t cols, const VecFn& vec_fn,
                 const ScalarFn& scalar_fn) {
  constexpr int64_t V = Vec<acc_t>::size();
  constexpr int64_t kBlock = 128 * V;
  const int64_t vec_end = std::min(j1, (cols / V) * V);
  LaneSums<acc_t> wide;
  for (int64_t b = j0; b < vec_end; b += kBlock) {
    const int64_t b1 = std::min(vec_end, b + kBlock);
    Vec<acc_t> a0(acc_t(0)), a1(acc_t(0));
    int64_t j = b;
    for (; j + 2 * V <= b1; j += 2 * V) {
      a0 = a0 + vec_fn(r, j);
      a1 = a1 + vec_fn(r, j + V);
    }
    if (j < b1) a0 = a0 + vec_fn(r, j);
    wide.add(a0 + a1);
  }
  const int64_t tail_begin = std::max(j0, vec_end);
  if (tail_begin < j1 && j1 - V >= j0) {
    // The tail as the row's last full vector, its lanes already summed zeroed: a latent row of
    // 20 would otherwise spend most of its time on 4 scalar exps.
    const Vec<acc_t> last = vec_fn(r, j1 - V);
    wide.add(Vec<acc_t>::set(last, Vec<acc_t>(acc_t(0)), V - (j1 - tail_begin)));
    return wide.total();
  }
  double s = wide.total();
  for (int64_t j = tail_begin; j < j1; ++j) s += static_cast<double>(scalar_fn(r, j));
  return s;
}

}  // namespace detail

// For each row r of a (rows, cols) problem: out[r] = sum_j f(r, j).
// `vec_fn(r, j)` returns Vec<acc_t> for columns j..j+V; `scalar_fn(r, j)` returns acc_t.
template <typename acc_t, typename VecFn, typename ScalarFn>
void row_sums(int64_t rows, int64_t cols, acc_t* out, const VecFn& vec_fn,
              const ScalarFn& scalar_fn) {
  const int64_t chunks = detail::row_chunks(cols);
  if (chunks == 1) {
    at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        out[r] = static_cast<acc_t>(detail::range_sum<acc_t>(r, 0, cols, cols, vec_fn, scalar_fn));
    });
    return;
  }
  // Long rows: one double per (row, chunk), added up per row in chunk order afterwards.
  std::vector<double> partial(rows * chunks);
  at::parallel_for(0, rows * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / chunks, j0 = (t % chunks) * kRowChunk;
      partial[t] = detail::range_sum<acc_t>(r, j0, std::min(cols, j0 + kRowChunk), cols, vec_fn, scalar_fn);
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[r * chunks + c];
    out[r] = static_cast<acc_t>(s);
  }
}

// Elementwise pass over a (rows, cols) problem with the same vector/tail split and tasks.
template <typename acc_t, typename VecFn, typename ScalarFn>
void row_map(int64_t rows, int64_t cols, const VecFn& vec_fn, const ScalarFn& scalar_fn) {
  constexpr int64_t V = Vec<acc_t>::size();
  const int64_t chunks = detail::row_chunks(cols);
  const int64_t span = chunks == 1 ? cols : kRowChunk;
  const int64_t vec_end = (cols / V) * V;
  at::parallel_for(0, rows * chunks, chunks == 1 ? row_grain(cols) : 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / chunks, j0 = (t % chunks) * span, j1 = std::min(cols, j0 + span);
      int64_t j = j0;
      for (; j < std::min(j1, vec_end); j += V) vec_fn(r, j);
      if (j < j1 && j1 - V >= j0) {
        vec_fn(r, j1 - V);  // the tail as the last full vector: its overlap is written twice, alike
        continue;
      }
      for (; j < j1; ++j) scalar_fn(r, j);
    }
  });
}

// The tiles of a sum over repeated rows: rows = repeats * out_rows, row r repeating row
// r % out_rows. Tasks are (b, block of up to 64 columns), so each walks its rows with short
// contiguous reads; body(b, j0, n, repeats) handles out row b's columns j0 .. j0 + n - 1.
template <typename Body>
void for_repeat_tiles(int64_t rows, int64_t out_rows, int64_t cols, const Body& body) {
  const int64_t repeats = rows / out_rows;
  const int64_t blocks = (cols + kRepeatBlock - 1) / kRepeatBlock;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(repeats * kRepeatBlock, 1));
  at::parallel_for(0, out_rows * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, j0 = (task % blocks) * kRepeatBlock;
      body(b, j0, std::min(cols - j0, kRepeatBlock), repeats);
    }
  });
}

// Gradient of an operand broadcast over the leading rows: out[b, j] = sum over the rows r with
// r % out_rows == b of f(r, j, pre(b, j)), summed in increasing r (deterministic), tiled by
// for_repeat_tiles. pre(b, j) is the part of each term that depends on (b, j) only (e.g. the
// inverse std of the broadcast log-variance being differentiated): taken once per output
// element, it keeps exp and the like out of the loop over the repeats. Both return acc_t.
template <typename acc_t, typename Pre, typename Fn>
void repeat_sums_cached(int64_t rows, int64_t out_rows, int64_t cols, acc_t* out, const Pre& pre, const Fn& fn) {
  for_repeat_tiles(rows, out_rows, cols, [&](int64_t b, int64_t j0, int64_t n, int64_t repeats) {
    acc_t acc[kRepeatBlock] = {}, cached[kRepeatBlock];
    for (int64_t q = 0; q < n; ++q) cached[q] = pre(b, j0 + q);
    for (int64_t k = 0; k < repeats; ++k) {
      const int64_t r = k * out_rows + b;
      for (int64_t q = 0; q < n; ++q) acc[q] += fn(r, j0 + q, cached[q]);
    }
    std::copy(acc, acc + n, out + b * cols + j0);
  });
}

// repeat_sums_cached with nothing to cache: f(r, j) returns acc_t.
template <typename acc_t, typename Fn>
void repeat_sums(int64_t rows, int64_t out_rows, int64_t cols, acc_t* out, const Fn& fn) {
  repeat_sums_cached<acc_t>(
      rows, out_rows, cols, out, [](int64_t, int64_t) { return acc_t(0); },
      [&](int64_t r, int64_t j, acc_t) { return fn(r, j); });
}

// repeat_sums of two operands' gradients in one walk: f(r, j) returns a pair (.first summed into
// out_a, .second into out_b), each sum in the same order as repeat_sums would add it.
template <typename acc_t, typename Fn>
void repeat_sums_pair(int64_t rows, int64_t out_rows, int64_t cols, acc_t* out_a, acc_t* out_b, const Fn& fn) {
  for_repeat_tiles(rows, out_rows, cols, [&](int64_t b, int64_t j0, int64_t n, int64_t repeats) {
    acc_t acc_a[kRepeatBlock] = {}, acc_b[kRepeatBlock] = {};
    for (int64_t k = 0; k < repeats; ++k) {
      const int64_t r = k * out_rows + b;
      for (int64_t q = 0; q < n; ++q) {
        const auto v = fn(r, j0 + q);
        acc_a[q] += v.first;
        acc_b[q] += v.second;
      }
    }
    std::copy(acc_a, acc_a + n, out_a + b * cols + j0);
    std::copy(acc_b, acc_b + n, out_b + b * cols + j0);
  });
}

}  // namespace fastvae
