// Launch skeletons shared by the CUDA kernels, mirroring csrc/cpu/row_reduce.h.
//
// Row kernels take a functor that works on a pack of V consecutive columns of one row:
//   fn.template sum<V>(r, j) -> acc_t   the row's terms at columns j .. j+V-1, summed
//   fn.template map<V>(r, j)            writes the row's outputs at columns j .. j+V-1
// V is the functor's kPack (16 bytes of its element type: one vectorised load per operand) when
// fn.packs_fit() says every operand is aligned for it and rows hold whole packs, else 1.
//
//   row_sums     out[r] = sum_j f(r, j). Short rows: a group of 8 or 32 lanes per row, reduced by
//                shuffles; long rows: a block (several, over 8192 columns) per row, reduced by a
//                fixed tree, the chunks added in order by a second pass. Deterministic, no atomics.
//   row_map      every pack once, grid-stride.
//   repeat_sums  out[b, j] = sum over r = b, b + out_rows, ... of f(r, j) (a plain element
//                lambda): chunks of repeats summed into partials, then the partials in order;
//                repeat_sums_pair two such sums from one walk.
// The summation order of both sums is a function of the shapes (and of whether operands are
// aligned for packs), never of the device: GPUs of one architecture give the same bits whatever
// their SM count (other architectures run other machine code, whose fused multiply-adds may
// differ). Only grid-stride loops, which add nothing up, size their grids by the SM count.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

#include "common/vae_math.h"

// Every kernel launch goes through FASTVAE_LAUNCH(grid, block, shared_bytes, stream, kernel)(args):
// CUDA's own launch under nvcc; in the emulation build (fastvae._C_emu: these sources compiled as
// C++ with FASTVAE_EMU) the SIMT emulator of csrc/emu/simt.h runs the kernel on the CPU.
#ifdef FASTVAE_EMU
#include "emu/simt.h"
#define FASTVAE_LAUNCH(grid, block, smem, stream, ...) FASTVAE_EMU_LAUNCH(grid, block, smem, stream, __VA_ARGS__)
#else
#define FASTVAE_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

namespace fastvae {
namespace cuda_detail {

constexpr int kThreads = 256;
constexpr int64_t kChunkCols = 8192;  // columns per block before a row is split across blocks

// ---------------------------------------------------------------- packs
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements of T in one 16-byte load.
template <typename T>
constexpr int pack_width() {
  return static_cast<int>(16 / sizeof(T));
}

// Packs move as CUDA's own vector types (uint4 for 16 bytes): one vector load each.
template <int Bytes>
struct PackBits {
  using type = Pack<uint8_t, Bytes>;
};
template <>
struct PackBits<16> {
  using type = uint4;
};
template <>
struct PackBits<8> {
  using type = uint2;
};
template <>
struct PackBits<4> {
  using type = uint32_t;
};
template <>
struct PackBits<2> {
  using type = uint16_t;
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  using Bits = typename PackBits<sizeof(Pack<T, N>)>::type;
  const Bits bits = *reinterpret_cast<const Bits*>(p);
  Pack<T, N> value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// Stores of 16 and 8 bytes are written as one vector instruction by hand: in the block-per-row
// kernels the compiler split even a uint4 store into four scalar ones (seen in the PTX). The
// "memory" clobber tells the compiler that the asm writes memory: no load or store of the
// kernel moves across it, and nothing it cached in registers is reused after it.
template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& value) {
  using Bits = typename PackBits<sizeof(Pack<T, N>)>::type;
  Bits bits;
  memcpy(&bits, &value, sizeof(value));
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(Bits) == 16) {
    asm volatile("st.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(bits.x), "r"(bits.y), "r"(bits.z), "r"(bits.w)
                 : "memory");
  } else if constexpr (sizeof(Bits) == 8) {
    asm volatile("st.v2.b32 [%0], {%1, %2};" ::"l"(p), "r"(bits.x), "r"(bits.y) : "memory");
  } else {
    *reinterpret_cast<Bits*>(p) = bits;
  }
#else
  *reinterpret_cast<Bits*>(p) = bits;  // the plain C++ twin (host pass, emulation build)
#endif
}

// True when rows of `cols` columns hold whole packs of N and every pointer (of any element type;
// null ones are ignored) is aligned for a pack of N of its own elements.
template <int N, typename... Ts>
bool packs_fit(int64_t cols, const Ts*... ptrs) {
  return cols % N == 0 && ((reinterpret_cast<uintptr_t>(ptrs) % (N * sizeof(Ts)) == 0) && ...);
}

// ---------------------------------------------------------------- row sums
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

// One block per (chunk of a row, row): rows row0 + blockIdx.y.
template <int V, typename acc_t, typename Fn>
__global__ void row_sums_by_block_kernel(int64_t row0, int64_t cols, int64_t chunks, acc_t* out, Fn fn) {
  const int64_t r = row0 + blockIdx.y, chunk = blockIdx.x;
  const int64_t begin = chunk * kChunkCols;
  const int64_t end = cols < begin + kChunkCols ? cols : begin + kChunkCols;
  acc_t s = 0;
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += int64_t(blockDim.x) * V)
    s += fn.template sum<V>(r, j);
  s = block_sum(s);
  if (threadIdx.x == 0) out[r * chunks + chunk] = s;
}

// Groups of kLanes consecutive lanes per row, several rows per block. Every lane of a warp reaches
// the shuffles (rows past the end add nothing), so the full mask is valid.
template <int V, int kLanes, typename acc_t, typename Fn>
__global__ void row_sums_by_lanes_kernel(int64_t rows, int64_t cols, acc_t* out, Fn fn) {
  const int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kLanes;
  const int lane = threadIdx.x % kLanes;
  acc_t s = 0;
  if (r < rows)
    for (int64_t j = int64_t(lane) * V; j < cols; j += int64_t(kLanes) * V) s += fn.template sum<V>(r, j);
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset, kLanes);
  if (lane == 0 && r < rows) out[r] = s;
}

template <typename acc_t>
__global__ void sum_chunks_kernel(int64_t rows, int64_t chunks, const acc_t* partial, acc_t* out) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  acc_t s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[r * chunks + c];
  out[r] = s;
}

inline int64_t multiprocessors() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

template <int V, int kLanes, typename acc_t, typename Fn>
void launch_row_sums_by_lanes(int64_t rows, int64_t cols, acc_t* out, const Fn& fn) {
  const int64_t blocks = (rows * kLanes + kThreads - 1) / kThreads;
  FASTVAE_LAUNCH(blocks, kThreads, 0, at::cuda::getCurrentCUDAStream(), row_sums_by_lanes_kernel<V, kLanes, acc_t>)(
      rows, cols, out, fn);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int V, typename acc_t, typename Fn>
void row_sums_packed(int64_t rows, int64_t cols, acc_t* out, const at::TensorOptions& acc_opts, const Fn& fn) {
  const int64_t packs = cols / V;
  // The row length alone picks the tree: 8 lanes per row up to 8 packs, 32 lanes up to 16 packs
  // a lane, a block per row beyond (not the SM count: a batch must not sum in another order on a
  // GPU with fewer SMs). Few rows of up to 512 packs get 32 threads each rather than a block.
  if (packs <= 8) {
    launch_row_sums_by_lanes<V, 8>(rows, cols, out, fn);
    return;
  }
  if (packs <= 32 * 16) {
    launch_row_sums_by_lanes<V, 32>(rows, cols, out, fn);
    return;
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t chunks = (cols + kChunkCols - 1) / kChunkCols;
  const int64_t packs_per_block = std::min<int64_t>(packs, kChunkCols / V);
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (packs_per_block + 31) / 32 * 32));
  at::Tensor partial;
  acc_t* target = out;
  if (chunks > 1) {
    partial = at::empty({rows * chunks}, acc_opts);
    target = partial.mutable_data_ptr<acc_t>();
  }
  // Rows in groups of at most the grid's y limit (65535 on every GPU; the emulator may set less).
  const int64_t max_grid_y = at::cuda::getCurrentDeviceProperties()->maxGridSize[1];
  for (int64_t r0 = 0; r0 < rows; r0 += max_grid_y) {
    const int64_t n = std::min(max_grid_y, rows - r0);
    FASTVAE_LAUNCH(dim3(chunks, n), threads, 0, stream, row_sums_by_block_kernel<V, acc_t>)(r0, cols, chunks, target, fn);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (chunks > 1) {
    FASTVAE_LAUNCH((rows + kThreads - 1) / kThreads, kThreads, 0, stream, sum_chunks_kernel<acc_t>)(rows, chunks, target, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename acc_t, typename Fn>
void row_sums(int64_t rows, int64_t cols, acc_t* out, const at::TensorOptions& acc_opts, const Fn& fn) {
  if (rows == 0) return;
  if (cols == 0) {  // empty sums; a grid of zero chunks would not launch
    C10_CUDA_CHECK(cudaMemsetAsync(out, 0, rows * sizeof(acc_t), at::cuda::getCurrentCUDAStream()));
    return;
  }
  if (fn.packs_fit())
    row_sums_packed<Fn::kPack>(rows, cols, out, acc_opts, fn);
  else
    row_sums_packed<1>(rows, cols, out, acc_opts, fn);
}

// ---------------------------------------------------------------- elementwise
inline int64_t grid_for(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, multiprocessors() * 32));
}

template <int V, typename Fn>
__global__ void row_map_kernel(int64_t packs, int64_t packs_per_row, Fn fn) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x)
    fn.template map<V>(p / packs_per_row, (p % packs_per_row) * V);
}

template <int V, typename Fn>
void row_map_packed(int64_t rows, int64_t cols, const Fn& fn) {
  const int64_t packs = rows * (cols / V);
  FASTVAE_LAUNCH(grid_for(packs), kThreads, 0, at::cuda::getCurrentCUDAStream(), row_map_kernel<V>)(packs, cols / V, fn);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Fn>
void row_map(int64_t rows, int64_t cols, const Fn& fn) {
  if (rows * cols == 0) return;
  if (fn.packs_fit())
    row_map_packed<Fn::kPack>(rows, cols, fn);
  else
    row_map_packed<1>(rows, cols, fn);
}

// ---------------------------------------------------------------- broadcast-operand gradients
// Two sums of one walk (repeat_sums_pair): fn returns an AccPair, .a and .b summed apart.
template <typename acc_t>
struct AccPair {
  acc_t a, b;
};

template <typename acc_t>
__device__ inline void add_terms(double (&s)[1], acc_t t) {
  s[0] += static_cast<double>(t);
}
template <typename acc_t>
__device__ inline void add_terms(double (&s)[2], const AccPair<acc_t>& t) {
  s[0] += static_cast<double>(t.a);
  s[1] += static_cast<double>(t.b);
}

// Chunk blockIdx.y's sums of kSums terms for output element idx: partial[(chunk * kSums + q) *
// out_elems + idx] holds sum q over the chunk's repeats, in repeat order.
template <typename acc_t, int kSums, typename Fn>
__global__ void repeat_partials_kernel(int64_t out_elems, int64_t out_rows, int64_t cols, int64_t repeats,
                                       int64_t per_chunk, double* partial, Fn fn) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= out_elems) return;
  const int64_t b = idx / cols, j = idx % cols;
  const int64_t k0 = blockIdx.y * per_chunk;
  const int64_t k1 = repeats < k0 + per_chunk ? repeats : k0 + per_chunk;
  double s[kSums] = {};
  for (int64_t k = k0; k < k1; ++k) add_terms<acc_t>(s, fn(k * out_rows + b, j));
  for (int q = 0; q < kSums; ++q) partial[(blockIdx.y * kSums + q) * out_elems + idx] = s[q];
}

// Partials and their sum in double: a broadcast gradient sums many terms of both signs (the
// upstream gradient of a mean-reduced loss), and float32 chunks lost 3e-4 of it at 65536 rows
// (seen on an H200), where the CPU kernels, which sum in double, agree with float64.
template <typename acc_t>
__global__ void sum_partials_kernel(int64_t out_elems, int64_t chunks, const double* partial, acc_t* out) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= out_elems) return;
  double s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * out_elems + idx];
  out[idx] = static_cast<acc_t>(s);
}

// Threads repeat_sums aims for: those of a GPU of ~128 SMs, a constant so that the chunks (and
// so the summation order) do not depend on the device.
constexpr int64_t kRepeatThreads = 128 * 2048;

// Chunks of repeats per output element: few outputs with many repeats (a per-dim variance over a
// large batch) split the repeats into up to 1024 chunks so that the GPU has enough threads. At
// most 1024, under every GPU's grid-y limit of 65535 (the emulator may set less).
inline int64_t repeat_chunks(int64_t repeats, int64_t out_elems) {
  const int64_t max_chunks = std::min<int64_t>({repeats, 1024, at::cuda::getCurrentDeviceProperties()->maxGridSize[1]});
  return std::clamp<int64_t>(kRepeatThreads / out_elems, 1, max_chunks);
}

// kSums (1 or 2) sums of fn over the repeats: the partials kernel over (out_elems, chunks), then
// each of the kSums * out_elems outputs' chunk partials in order into out (contiguous). No rows:
// every sum is empty, out is zeroed.
template <typename acc_t, int kSums, typename Fn>
void launch_repeat_sums(int64_t rows, int64_t out_rows, int64_t cols, acc_t* out, const at::TensorOptions& acc_opts,
                        const Fn& fn) {
  static_assert(kSums == 1 || kSums == 2, "repeat_sums: one sum or a pair");
  const int64_t out_elems = out_rows * cols;
  if (out_elems == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t repeats = rows / out_rows;
  if (repeats == 0) {  // no rows: empty sums (and no chunk count of 0 to divide by)
    C10_CUDA_CHECK(cudaMemsetAsync(out, 0, kSums * out_elems * sizeof(acc_t), stream));
    return;
  }
  const int64_t chunks = repeat_chunks(repeats, out_elems);
  const int64_t per_chunk = (repeats + chunks - 1) / chunks;
  auto partial = at::empty({chunks * kSums * out_elems}, acc_opts.dtype(at::kDouble));
  const dim3 grid((out_elems + kThreads - 1) / kThreads, chunks);
  FASTVAE_LAUNCH(grid, kThreads, 0, stream, repeat_partials_kernel<acc_t, kSums>)(
      out_elems, out_rows, cols, repeats, per_chunk, partial.mutable_data_ptr<double>(), fn);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  FASTVAE_LAUNCH((kSums * out_elems + kThreads - 1) / kThreads, kThreads, 0, stream, sum_partials_kernel<acc_t>)(
      kSums * out_elems, chunks, partial.const_data_ptr<double>(), out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out is (out_rows, cols) in acc_t: out[b, j] = sum over the repeats of fn(r, j).
template <typename acc_t, typename Fn>
void repeat_sums(int64_t rows, int64_t out_rows, int64_t cols, acc_t* out, const at::TensorOptions& acc_opts, Fn fn) {
  launch_repeat_sums<acc_t, 1>(rows, out_rows, cols, out, acc_opts, fn);
}

// Two operands' broadcast gradients from one walk (both broadcast alike): fn(r, j) returns an
// AccPair; out is (2, out_rows, cols), .a's sums first. Two launches instead of repeat_sums'
// four, each sum in repeat_sums' order (the chunks depend on out_rows * cols alone).
template <typename acc_t, typename Fn>
void repeat_sums_pair(int64_t rows, int64_t out_rows, int64_t cols, acc_t* out, const at::TensorOptions& acc_opts,
                      Fn fn) {
  launch_repeat_sums<acc_t, 2>(rows, out_rows, cols, out, acc_opts, fn);
}

}  // namespace cuda_detail
}  // namespace fastvae
