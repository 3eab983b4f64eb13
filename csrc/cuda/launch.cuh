// Launch skeletons shared by the CUDA kernels, mirroring csrc/cpu/row_reduce.h:
//   row_sums     out[r] = sum_j f(r, j): a block (or several, for long rows) per row, the block's
//                partials combined by a fixed-order tree and, for split rows, a second pass that
//                adds the chunks in order: deterministic, no atomics.
//   row_map      f(r, j) for every element, grid-stride.
//   repeat_sums  out[b, j] = sum over r = b, b + out_rows, ... of f(r, j): chunks of repeats
//                summed into partials, then the partials added in order.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

#include "common/vae_math.h"

namespace fastvae {
namespace cuda_detail {

constexpr int kThreads = 256;
constexpr int64_t kChunkCols = 8192;  // columns per block before a row is split across blocks

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  acc_t total = 0;
  if (warp == 0) {
    total = lane < (blockDim.x + 31) / 32 ? warp_sums[lane] : acc_t(0);
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_down_sync(0xffffffffu, total, offset);
  }
  return total;  // valid in thread 0
}

template <typename acc_t, typename Fn>
__global__ void row_sums_kernel(int64_t cols, int64_t chunks, acc_t* out, Fn fn) {
  const int64_t r = blockIdx.y, chunk = blockIdx.x;
  const int64_t begin = chunk * kChunkCols;
  const int64_t end = cols < begin + kChunkCols ? cols : begin + kChunkCols;
  acc_t s = 0;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) s += fn(r, j);
  s = block_sum(s);
  if (threadIdx.x == 0) out[r * chunks + chunk] = s;
}

template <typename acc_t>
__global__ void sum_chunks_kernel(int64_t rows, int64_t chunks, const acc_t* partial, acc_t* out) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  acc_t s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[r * chunks + c];
  out[r] = s;
}

// rows must fit in gridDim.y (65535); longer problems are launched in slices of rows.
template <typename acc_t, typename Fn>
void row_sums(int64_t rows, int64_t cols, acc_t* out, const at::TensorOptions& acc_opts, Fn fn) {
  if (rows == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t chunks = (cols + kChunkCols - 1) / kChunkCols;
  // Short rows get a smaller block so that few lanes idle.
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (cols + 31) / 32 * 32)));
  at::Tensor partial;
  acc_t* target = out;
  if (chunks > 1) {
    partial = at::empty({rows * chunks}, acc_opts);
    target = partial.mutable_data_ptr<acc_t>();
  }
  constexpr int64_t kMaxGridY = 65535;
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxGridY) {
    const int64_t n = std::min(kMaxGridY, rows - r0);
    auto shifted = [fn, r0] __device__(int64_t r, int64_t j) { return fn(r + r0, j); };
    row_sums_kernel<acc_t><<<dim3(chunks, n), threads, 0, stream>>>(cols, chunks, target + r0 * chunks, shifted);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (chunks > 1) {
    sum_chunks_kernel<acc_t><<<(rows + kThreads - 1) / kThreads, kThreads, 0, stream>>>(rows, chunks, target, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename Fn>
__global__ void row_map_kernel(int64_t total, int64_t cols, Fn fn) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    fn(i / cols, i % cols);
}

inline int64_t grid_for(int64_t total) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, sms * 32));
}

template <typename Fn>
void row_map(int64_t rows, int64_t cols, Fn fn) {
  const int64_t total = rows * cols;
  if (total == 0) return;
  row_map_kernel<<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(total, cols, fn);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t, typename Fn>
__global__ void repeat_partials_kernel(int64_t out_elems, int64_t out_rows, int64_t cols, int64_t repeats,
                                       int64_t per_chunk, acc_t* partial, Fn fn) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= out_elems) return;
  const int64_t b = idx / cols, j = idx % cols;
  const int64_t k0 = blockIdx.y * per_chunk;
  const int64_t k1 = repeats < k0 + per_chunk ? repeats : k0 + per_chunk;
  acc_t s = 0;
  for (int64_t k = k0; k < k1; ++k) s += fn(k * out_rows + b, j);
  partial[blockIdx.y * out_elems + idx] = s;
}

template <typename acc_t>
__global__ void sum_partials_kernel(int64_t out_elems, int64_t chunks, const acc_t* partial, acc_t* out) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= out_elems) return;
  acc_t s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * out_elems + idx];
  out[idx] = s;
}

// out is (out_rows, cols) in acc_t. Few outputs with many repeats (a per-dim variance over a
// large batch) split the repeats into up to 1024 chunks so that the GPU has enough threads.
template <typename acc_t, typename Fn>
void repeat_sums(int64_t rows, int64_t out_rows, int64_t cols, acc_t* out, const at::TensorOptions& acc_opts, Fn fn) {
  const int64_t out_elems = out_rows * cols;
  if (out_elems == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t repeats = rows / out_rows;
  const int64_t want_threads = 132 * 2048;
  const int64_t chunks = std::clamp<int64_t>(want_threads / out_elems, 1, std::min<int64_t>(repeats, 1024));
  const int64_t per_chunk = (repeats + chunks - 1) / chunks;
  auto partial = at::empty({chunks * out_elems}, acc_opts);
  const dim3 grid((out_elems + kThreads - 1) / kThreads, chunks);
  repeat_partials_kernel<acc_t><<<grid, kThreads, 0, stream>>>(out_elems, out_rows, cols, repeats, per_chunk,
                                                               partial.mutable_data_ptr<acc_t>(), fn);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sum_partials_kernel<acc_t><<<(out_elems + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      out_elems, chunks, partial.const_data_ptr<acc_t>(), out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda_detail
}  // namespace fastvae
