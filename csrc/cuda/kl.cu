// KL(N(mu, diag e^logvar) || N(0, I)) per row, and its backward (mirrors csrc/cpu/kl.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/checks.h"
#include "cuda/kl_rows.cuh"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

// d/dmu = mu, d/dlogvar = (e^logvar - 1) / 2, both times the row's incoming gradient.
template <typename scalar_t>
struct KlGrads {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  const acc_t* grad;
  const scalar_t* mu;
  const scalar_t* logvar;
  scalar_t* grad_mu;
  scalar_t* grad_logvar;
  int64_t cols;

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(cols, mu, logvar, grad_mu, grad_logvar); }

  template <int V>
  __device__ void map(int64_t r, int64_t j) const {
    const int64_t i = r * cols + j;
    store_kl_grads<V>(load_pack<V>(mu + i), load_pack<V>(logvar + i), grad[r], grad_mu, grad_logvar, i);
  }
};

}  // namespace

at::Tensor kl_standard_normal(const at::Tensor& mu, const at::Tensor& logvar) {
  check_kl_operands(mu, logvar);
  const c10::cuda::CUDAGuard guard(mu.device());
  auto acc_opts = mu.options().dtype(acc_dtype(mu.scalar_type()));
  auto kl = at::empty({mu.size(0)}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "kl_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const KlRows<scalar_t> rows{mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(), mu.size(1)};
    row_sums<acc_t>(mu.size(0), mu.size(1), kl.mutable_data_ptr<acc_t>(), acc_opts, rows);
  });
  return kl;
}

TensorPair kl_standard_normal_backward(const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& logvar) {
  check_kl_operands(mu, logvar);  // the kernels index logvar as a contiguous matrix like mu
  check_row_grad(grad, mu, "mu");
  const c10::cuda::CUDAGuard guard(mu.device());
  auto grad_mu = at::empty_like(mu);
  auto grad_logvar = at::empty_like(logvar);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "kl_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    row_map(mu.size(0), mu.size(1),
            KlGrads<scalar_t>{grad.const_data_ptr<acc_t>(), mu.const_data_ptr<scalar_t>(),
                              logvar.const_data_ptr<scalar_t>(), grad_mu.mutable_data_ptr<scalar_t>(),
                              grad_logvar.mutable_data_ptr<scalar_t>(), mu.size(1)});
  });
  return {grad_mu, grad_logvar};
}

}  // namespace cuda
}  // namespace fastvae
