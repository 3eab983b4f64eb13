// The categorical log-likelihood per image, mirroring csrc/cpu/categorical.cpp: logits
// (B, K, C, P); one thread per subpixel (channel, position) walks its K logits (any strides) once
// for a running max and sum of exps (common/categorical.h's lse_step), then, with compute_grad,
// once more to write onehot(x) - softmax. The per-image sums go through launch.cuh's deterministic row sums. A level
// outside 0 .. K-1 makes that subpixel's term (and its gradients) NaN: checking it on the host
// would cost a device sync.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "common/categorical.h"
#include "common/philox.h"
#include "cuda/draw.cuh"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

template <typename scalar_t, typename x_t>
struct CategoricalRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = 1;
  const scalar_t* logits;
  const x_t* x;
  scalar_t* grad;  // null: no gradient asked for
  int64_t classes, cols, positions;  // K, C * P, P
  int64_t lb, lk, lc, lp;  // logits' strides (image, class, channel, position)
  int64_t gb, gk, gc, gp;  // grad's
  acc_t scale;  // the gradient written is scale * (onehot(x) - softmax)

  bool packs_fit() const { return false; }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    acc_t s = 0;
#pragma unroll
    for (int v = 0; v < V; ++v) s += subpixel(r, j + v);
    return s;
  }

  __device__ acc_t subpixel(int64_t r, int64_t j) const {
    const int64_t c = j / positions, p = j - c * positions;
    const scalar_t* l = logits + r * lb + c * lc + p * lp;
    acc_t m = -std::numeric_limits<acc_t>::infinity(), se = 0;
    for (int64_t k = 0; k < classes; ++k) lse_step(static_cast<acc_t>(l[k * lk]), m, se);
    const acc_t lse = m + fv_log(se);
    const x_t level = x[r * cols + j];
    const bool ok = level_ok(level, classes);
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    const int64_t xi = ok ? static_cast<int64_t>(level) : 0;
    if (grad) {
      scalar_t* g = grad + r * gb + c * gc + p * gp;
      const acc_t bad = ok ? acc_t(0) : nan;
      for (int64_t k = 0; k < classes; ++k) {
        const acc_t p = fv_exp(static_cast<acc_t>(l[k * lk]) - lse);
        g[k * gk] = static_cast<scalar_t>(scale * (k == xi ? acc_t(1) - p : acc_t(0) - p) + bad);
      }
    }
    return ok ? static_cast<acc_t>(l[xi * lk]) - lse : nan;
  }
};

template <typename scalar_t, typename x_t>
void categorical_forward(const at::Tensor& logits, const at::Tensor& x, at::Tensor& ll, at::Tensor& grad,
                         double grad_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor& gt = grad.defined() ? grad : logits;
  const CategoricalRows<scalar_t, x_t> rows{logits.const_data_ptr<scalar_t>(), x.const_data_ptr<x_t>(),
                                            grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr,
                                            logits.size(1), x.size(1), logits.size(3),
                                            logits.stride(0), logits.stride(1), logits.stride(2), logits.stride(3),
                                            gt.stride(0), gt.stride(1), gt.stride(2), gt.stride(3),
                                            static_cast<acc_t>(grad_scale)};
  row_sums<acc_t>(logits.size(0), x.size(1), ll.mutable_data_ptr<acc_t>(), ll.options(), rows);
}

// The sampler: one thread per subpixel q = b C P + s (the levels' flat index), grid-stride, the
// CPU kernel's inverse-CDF draw (common/categorical.h) at uniform q of the call's stream. Logits
// that are not a distribution give level 0 (raising would cost a device sync).
template <typename scalar_t, typename out_t>
__global__ void categorical_sample_kernel(const scalar_t* logits, int64_t lb, int64_t lk, int64_t lc, int64_t lp,
                                          int64_t classes, int64_t positions, int64_t cols, int64_t units,
                                          at::PhiloxCudaState philox, out_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState st = unpack_state(philox, nullptr, false);
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < units; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = q / cols, s = q % cols, c = s / positions, p = s % positions;
    const scalar_t* l = logits + b * lb + c * lc + p * lp;
    const auto load = [&](int64_t k) { return static_cast<acc_t>(l[k * lk]); };
    PhiloxWords words(st);
    const int64_t v = categorical_draw<acc_t>(load, classes, philox_open_unit<acc_t>(words(static_cast<uint64_t>(q))));
    out[q] = static_cast<out_t>(v < 0 ? 0 : v);
  }
}

}  // namespace

TensorPair categorical_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  return categorical_log_likelihood_scaled(logits, x, compute_grad, 1.0);
}

TensorPair categorical_log_likelihood_scaled(const at::Tensor& logits, const at::Tensor& x, bool compute_grad,
                                             double grad_scale) {
  check_categorical(logits, x);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto ll = at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
  at::Tensor grad = compute_grad ? at::empty_like(logits) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "categorical_ll_cuda", [&] {
    if (x.scalar_type() == at::kByte) {
      categorical_forward<scalar_t, uint8_t>(logits, x, ll, grad, grad_scale);
    } else {
      categorical_forward<scalar_t, int64_t>(logits, x, ll, grad, grad_scale);
    }
  });
  return {ll, compute_grad ? grad : at::empty({0}, logits.options())};
}

at::Tensor sample_categorical(const at::Tensor& logits, std::optional<at::Generator> generator,
                              const std::optional<at::Tensor>& rng_state) {
  check_categorical_sample(logits, rng_state);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t cols = logits.size(2) * logits.size(3);
  auto out = at::empty({logits.size(0), cols}, logits.options().dtype(level_dtype(logits.size(1))));
  const auto philox = sampling_philox(logits, generator, rng_state);
  const int64_t units = out.numel();
  if (units == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "categorical_sample_cuda", [&] {
    dispatch_level_type(out, [&](auto tag) {
      using out_t = decltype(tag);
      FASTVAE_LAUNCH(grid_for(units), kThreads, 0, stream, categorical_sample_kernel<scalar_t, out_t>)(
          logits.const_data_ptr<scalar_t>(), logits.stride(0), logits.stride(1), logits.stride(2), logits.stride(3),
          logits.size(1), logits.size(3), cols, units, philox, out.mutable_data_ptr<out_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace cuda
}  // namespace fastvae
