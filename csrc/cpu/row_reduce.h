// Loop skeletons shared by the CPU kernels: rows split across threads, each row walked once with
// Vectorized<acc_t> and finished with a scalar tail, so every row sum has a fixed order
// (deterministic whatever the thread count).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/vec_math.h"

namespace fastvae {

// Rows per parallel task: enough columns that a task is worth a thread hand-off.
inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
}

// For each row r of a (rows, cols) problem: out[r] = sum_j f(r, j), where f is called as
// f(r, j, Vec<acc_t>-tag) for full vectors and f(r, j, acc_t-tag) for the tail.
// `vec_fn(r, j)` returns Vec<acc_t> for columns j..j+V; `scalar_fn(r, j)` returns acc_t.
template <typename acc_t, typename VecFn, typename ScalarFn>
void row_sums(int64_t rows, int64_t cols, acc_t* out, const VecFn& vec_fn,
              const ScalarFn& scalar_fn) {
  constexpr int64_t V = Vec<acc_t>::size();
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      Vec<acc_t> acc(acc_t(0));
      int64_t j = 0;
      for (; j + V <= cols; j += V) acc = acc + vec_fn(r, j);
      acc_t s = vec_sum(acc);
      for (; j < cols; ++j) s += scalar_fn(r, j);
      out[r] = s;
    }
  });
}

// Elementwise pass over a (rows, cols) problem with the same vector/tail split.
template <typename acc_t, typename VecFn, typename ScalarFn>
void row_map(int64_t rows, int64_t cols, const VecFn& vec_fn, const ScalarFn& scalar_fn) {
  constexpr int64_t V = Vec<acc_t>::size();
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t j = 0;
      for (; j + V <= cols; j += V) vec_fn(r, j);
      for (; j < cols; ++j) scalar_fn(r, j);
    }
  });
}

// Gradient of an operand broadcast over the leading rows: out[b, j] = sum over the rows r with
// r % out_rows == b of f(r, j), summed in increasing r (deterministic). Tasks are (b, block of
// 64 columns), so each walks its rows with short contiguous reads. f(r, j) returns acc_t.
template <typename acc_t, typename Fn>
void repeat_sums(int64_t rows, int64_t out_rows, int64_t cols, acc_t* out, const Fn& fn) {
  constexpr int64_t kBlock = 64;
  const int64_t repeats = rows / out_rows;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(repeats * kBlock, 1));
  at::parallel_for(0, out_rows * blocks, grain, [&](int64_t begin, int64_t end) {
    acc_t acc[kBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t j0 = (task % blocks) * kBlock, j1 = std::min(cols, j0 + kBlock);
      std::fill(acc, acc + kBlock, acc_t(0));
      for (int64_t k = 0; k < repeats; ++k) {
        const int64_t r = k * out_rows + b;
        for (int64_t j = j0; j < j1; ++j) acc[j - j0] += fn(r, j);
      }
      std::copy(acc, acc + (j1 - j0), out + b * cols + j0);
    }
  });
}

}  // namespace fastvae
