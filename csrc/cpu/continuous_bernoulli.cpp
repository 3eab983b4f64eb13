// The continuous Bernoulli log-likelihood of x in [0, 1] under decoder logits, one row per
// example, summed over columns (csrc/common/continuous_bernoulli.h), with d ll / d logits written
// in the same pass, by the rows of cpu/logit_rows.h (as the Bernoulli likelihood): x may
// broadcast over the leading rows of the logits (row r reads x row r % x.rows).
#include "cpu/vec_math.h"

namespace fastvae {
// The vector log the math header needs (vec_math.h has the others), declared before it so that
// its templates find it.
template <typename T>
inline Vec<T> fv_log(const Vec<T>& v) { return v.log(); }
}  // namespace fastvae

#include "common/continuous_bernoulli.h"
#include "cpu/logit_rows.h"

namespace fastvae {
namespace cpu {

namespace {
struct ContinuousBernoulliMath {
  static constexpr const char* kName = "continuous_bernoulli_ll";
  template <typename T>
  static T apply(T l, T x, T* dl) { return continuous_bernoulli_ll_with_grad(l, x, dl); }
};
}  // namespace

TensorPair continuous_bernoulli_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  return logit_rows_log_likelihood<ContinuousBernoulliMath>(logits, x, compute_grad);
}

}  // namespace cpu
}  // namespace fastvae
