// The continuous Bernoulli log-likelihood per row (csrc/common/continuous_bernoulli.h), mirroring
// csrc/cpu/continuous_bernoulli.cpp: the rows of cuda/logit_rows.cuh, d ll / d logits written in
// the same pass; x may broadcast over the leading rows (row r reads x row r % x.rows).
#include "common/continuous_bernoulli.h"
#include "cuda/logit_rows.cuh"

namespace fastvae {
namespace cuda {

namespace {
struct ContinuousBernoulliMath {
  static constexpr const char* kName = "continuous_bernoulli_ll_cuda";
  template <typename T>
  __device__ static T apply(T l, T x, T* dl) { return continuous_bernoulli_ll_with_grad(l, x, dl); }
};
}  // namespace

TensorPair continuous_bernoulli_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  return cuda_detail::logit_rows_log_likelihood<ContinuousBernoulliMath>(logits, x, compute_grad);
}

}  // namespace cuda
}  // namespace fastvae
