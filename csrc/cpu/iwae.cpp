// The importance-weighted bound over (K, B) log-weights: per column, the bound and the
// normalised weights in one kernel (csrc/common/iwae_math.h). Its backward is autograd's
// (csrc/autograd/iwae.cpp): the weights times the incoming gradient.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "common/iwae_checks.h"
#include "common/iwae_math.h"
#include "cpu/outputs.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

TensorPair iwae_bound(const at::Tensor& log_w, const std::optional<at::Tensor>& gate) {
  check_log_weights(log_w);
  check_iwae_gate(log_w, gate);  // read by autograd only
  const int64_t k_count = log_w.size(0), cols = log_w.size(1);
  auto acc_opts = log_w.options().dtype(acc_dtype(log_w.scalar_type()));
  auto bound = at::empty({cols}, acc_opts);
  auto weights = large_output(at::empty({k_count, cols}, acc_opts));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_w.scalar_type(), "iwae_bound", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lw = log_w.const_data_ptr<scalar_t>();
    acc_t* w = weights.mutable_data_ptr<acc_t>();
    acc_t* out = bound.mutable_data_ptr<acc_t>();
    const acc_t log_k = static_cast<acc_t>(std::log(static_cast<double>(k_count)));
    // Columns in parallel; about 32K elements per task.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / k_count);
    at::parallel_for(0, cols, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) out[b] = iwae_column<scalar_t, acc_t>(lw + b, w + b, k_count, cols, log_k);
    });
  });
  return {bound, weights};
}

// The DReG gate's forward: z unchanged (a copy: an op's outputs do not alias its inputs) and a
// zero token per sample, which only carries the weights back in the backward pass.
TensorPair dreg_gate(const at::Tensor& z) {
  check_gate_samples(z);
  auto token = at::zeros(z.sizes().slice(0, z.dim() - 1), z.options().dtype(acc_dtype(z.scalar_type())));
  return {z.clone(at::MemoryFormat::Contiguous), token};
}

}  // namespace cpu
}  // namespace fastvae
