// Autograd for the continuous Bernoulli log-likelihood: the forward kernel writes d ll / d logits
// in the same pass; backward scales it (autograd/logits_likelihood.h, as the Bernoulli one).
#include <torch/library.h>

#include "autograd/logits_likelihood.h"

namespace fastvae {
namespace autograd {

class ContinuousBernoulliLogLikelihood : public LogitsLikelihood<ContinuousBernoulliLogLikelihood> {
 public:
  static constexpr const char* kName = "fastvae::continuous_bernoulli_log_likelihood";
};

TORCH_LIBRARY_IMPL(fastvae, Autograd, m) {
  m.impl("continuous_bernoulli_log_likelihood", &ContinuousBernoulliLogLikelihood::apply_pair);
}

}  // namespace autograd
}  // namespace fastvae
