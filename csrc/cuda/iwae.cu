// The importance-weighted bound over (K, B) log-weights (mirrors csrc/cpu/iwae.cpp): one thread
// per example (column), its K samples read down the column, so that a warp reads 32 consecutive
// examples of a sample row (coalesced). Bound and weights are written in the same launch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>

#include "common/iwae_checks.h"
#include "common/iwae_math.h"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

template <typename scalar_t, typename acc_t>
__global__ void iwae_bound_kernel(const scalar_t* log_w, acc_t* weights, acc_t* bound, int64_t k_count,
                                  int64_t cols, acc_t log_k) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < cols; b += int64_t(gridDim.x) * blockDim.x)
    bound[b] = iwae_column<scalar_t, acc_t>(log_w + b, weights + b, k_count, cols, log_k);
}

}  // namespace

TensorPair iwae_bound(const at::Tensor& log_w, const std::optional<at::Tensor>& gate) {
  check_log_weights(log_w);
  check_iwae_gate(log_w, gate);  // read by autograd only
  const c10::cuda::CUDAGuard guard(log_w.device());
  const int64_t k_count = log_w.size(0), cols = log_w.size(1);
  auto acc_opts = log_w.options().dtype(acc_dtype(log_w.scalar_type()));
  auto bound = at::empty({cols}, acc_opts);
  auto weights = at::empty({k_count, cols}, acc_opts);
  if (cols == 0) return {bound, weights};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_w.scalar_type(), "iwae_bound_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t log_k = static_cast<acc_t>(std::log(static_cast<double>(k_count)));
    FASTVAE_LAUNCH(grid_for(cols), kThreads, 0, at::cuda::getCurrentCUDAStream(), iwae_bound_kernel<scalar_t, acc_t>)(
        log_w.const_data_ptr<scalar_t>(), weights.mutable_data_ptr<acc_t>(), bound.mutable_data_ptr<acc_t>(), k_count,
        cols, log_k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {bound, weights};
}

TensorPair dreg_gate(const at::Tensor& z) {
  check_gate_samples(z);
  const c10::cuda::CUDAGuard guard(z.device());
  auto token = at::zeros(z.sizes().slice(0, z.dim() - 1), z.options().dtype(acc_dtype(z.scalar_type())));
  return {z.clone(at::MemoryFormat::Contiguous), token};
}

}  // namespace cuda
}  // namespace fastvae
