// Reparameterised sampling z = mu + e^(logvar/2) * eps with eps drawn from the Philox stream of
// csrc/common/philox.h. eps is never stored: the backward pass draws it again from rng_state.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <mutex>
#include <vector>

#include "common/checks.h"
#include "cpu/vec_math.h"  // before philox.h: it brings vae_math.h with the vector overloads
#include "common/philox.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

namespace {

PhiloxState read_state(const at::Tensor& rng_state) {
  const int64_t* s = rng_state.const_data_ptr<int64_t>();
  return {static_cast<uint64_t>(s[0]), static_cast<uint64_t>(s[1])};
}

// The normals of kGroups consecutive Philox groups: the integer rounds per group, then the
// Box-Muller transform vectorised (log, sqrt, sin, cos on Vectorized<acc_t>), which is most of
// the cost. Same stream as philox_normal4 up to the last bits of the transcendental functions.
constexpr int64_t kGroups = 16;

template <typename acc_t>
void normals_block(PhiloxState st, int64_t group0, acc_t out[4 * kGroups]) {
  constexpr int64_t kPairs = 2 * kGroups;
  alignas(64) acc_t u1[kPairs], u2[kPairs], rad[kPairs], sn[kPairs], cs[kPairs];
  for (int64_t g = 0; g < kGroups; ++g) {
    uint32_t c[4];
    philox_group_bits(st, static_cast<uint64_t>(group0 + g), c);
    u1[2 * g] = philox_u1<acc_t>(c[0]);
    u2[2 * g] = philox_u2<acc_t>(c[1]);
    u1[2 * g + 1] = philox_u1<acc_t>(c[2]);
    u2[2 * g + 1] = philox_u2<acc_t>(c[3]);
  }
  constexpr int64_t V = Vec<acc_t>::size();
  static_assert(kPairs % V == 0, "a block must hold whole vectors");
  for (int64_t p = 0; p < kPairs; p += V) {
    const auto angle = Vec<acc_t>(acc_t(6.2831853071795864)) * Vec<acc_t>::loadu(u2 + p);
    (Vec<acc_t>(acc_t(-2)) * Vec<acc_t>::loadu(u1 + p).log()).sqrt().store(rad + p);
    angle.sin().store(sn + p);
    angle.cos().store(cs + p);
  }
  for (int64_t q = 0; q < kPairs; ++q) {
    out[2 * q] = rad[q] * cs[q];
    out[2 * q + 1] = rad[q] * sn[q];
  }
}

// Calls fn(i, eps_i) for every flat index i in [begin, end), a block of Philox groups at a time.
template <typename acc_t, typename Fn>
void for_each_eps(PhiloxState st, int64_t begin, int64_t end, const Fn& fn) {
  alignas(64) acc_t eps[4 * kGroups];
  for (int64_t group0 = begin / 4; group0 * 4 < end; group0 += kGroups) {
    normals_block<acc_t>(st, group0, eps);
    const int64_t lo = std::max(begin, group0 * 4), hi = std::min(end, (group0 + kGroups) * 4);
    for (int64_t i = lo; i < hi; ++i) fn(i, eps[i - group0 * 4]);
  }
}

// This call's Philox (seed, offset): the given rng_state's, or a fresh seed from the generator
// (offset 0: every call has its own key), as a new 2-element tensor the backward pass reads.
at::Tensor sampling_state(const at::Tensor& like, std::optional<at::Generator> generator,
                          const std::optional<at::Tensor>& rng_state) {
  auto state = at::empty({2}, like.options().dtype(at::kLong));
  int64_t* out = state.mutable_data_ptr<int64_t>();
  if (rng_state.has_value() && rng_state->defined()) {
    out[0] = rng_state->const_data_ptr<int64_t>()[0];
    out[1] = rng_state->const_data_ptr<int64_t>()[1];
    return state;
  }
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  out[0] = static_cast<int64_t>(gen->random64());
  out[1] = 0;
  return state;
}

// z = mu + e^(logvar/2) * eps for num_samples draws of eps from the stream of rng_state.
at::Tensor sample(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& rng_state,
                  int64_t num_samples) {
  std::vector<int64_t> shape{num_samples};
  shape.insert(shape.end(), mu.sizes().begin(), mu.sizes().end());
  auto z = at::empty(shape, mu.options());
  const PhiloxState st = read_state(rng_state);
  const int64_t n = mu.numel(), total = n * num_samples;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, (total + 3) / 4, 2048, [&](int64_t gb, int64_t ge) {
      for_each_eps<acc_t>(st, gb * 4, std::min(total, ge * 4), [&](int64_t i, acc_t eps) {
        const int64_t p = i % n;
        zp[i] = static_cast<scalar_t>(static_cast<acc_t>(m[p]) +
                                      fv_exp(acc_t(0.5) * static_cast<acc_t>(lv[p])) * eps);
      });
    });
  });
  return z;
}

}  // namespace

TensorPair reparameterize(const at::Tensor& mu, const at::Tensor& logvar, int64_t num_samples,
                          std::optional<at::Generator> generator, const std::optional<at::Tensor>& rng_state) {
  check_sampling_call(mu, logvar, num_samples, rng_state);
  auto state = sampling_state(mu, generator, rng_state);
  return {sample(mu, logvar, state, num_samples), state};
}

// On the CPU the two passes run back to back over the same (rows, cols) operands, which the
// sampling pass leaves in cache; the CUDA kernel does both in one pass.
TensorTriple reparameterize_with_kl(const at::Tensor& mu, const at::Tensor& logvar, int64_t num_samples,
                                    std::optional<at::Generator> generator,
                                    const std::optional<at::Tensor>& rng_state) {
  check_matrix(mu, "mu");
  check_sampling_call(mu, logvar, num_samples, rng_state);
  auto state = sampling_state(mu, generator, rng_state);
  return {sample(mu, logvar, state, num_samples), kl_standard_normal(mu, logvar), state};
}

TensorPair reparameterize_backward(const at::Tensor& grad_z, const at::Tensor& mu, const at::Tensor& logvar,
                                   const at::Tensor& rng_state, const std::optional<at::Tensor>& grad_kl) {
  check_sampling_inputs(mu, logvar, rng_state);
  check_kl_grad(grad_kl, mu);
  const int64_t n = mu.numel();
  TORCH_CHECK(grad_z.dim() == mu.dim() + 1 && grad_z.numel() == grad_z.size(0) * n &&
                  grad_z.scalar_type() == mu.scalar_type() && grad_z.is_contiguous(),
              "fastvae: grad_z must be a contiguous (num_samples, *mu.shape) tensor of mu's dtype");
  auto grad_mu = at::empty_like(mu);
  auto grad_logvar = at::empty_like(logvar);
  const PhiloxState st = read_state(rng_state);
  const int64_t samples = grad_z.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad_z.const_data_ptr<scalar_t>();
    const scalar_t* m = mu.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar.const_data_ptr<scalar_t>();
    scalar_t* gm = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* glv = grad_logvar.mutable_data_ptr<scalar_t>();
    // The KL output's gradient, when reparameterize_with_kl's KL was used too.
    const acc_t* gkl = grad_kl.has_value() && grad_kl->defined() ? grad_kl->const_data_ptr<acc_t>() : nullptr;
    const int64_t cols = mu.dim() == 2 ? mu.size(1) : 1;
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      // Sums over the samples in sample order, so the result is the same for any thread count.
      std::vector<acc_t> sum_g(e - b, acc_t(0)), sum_g_eps(e - b, acc_t(0));
      for (int64_t k = 0; k < samples; ++k) {
        for_each_eps<acc_t>(st, k * n + b, k * n + e, [&](int64_t i, acc_t eps) {
          const acc_t gi = static_cast<acc_t>(g[i]);
          sum_g[i - k * n - b] += gi;
          sum_g_eps[i - k * n - b] += gi * eps;
        });
      }
      for (int64_t p = b; p < e; ++p) {
        const acc_t lvp = static_cast<acc_t>(lv[p]);
        // dz/dlogvar = eps * e^(logvar/2) / 2.
        acc_t dmu = sum_g[p - b], dlv = sum_g_eps[p - b] * acc_t(0.5) * fv_exp(acc_t(0.5) * lvp);
        if (gkl) {
          const acc_t gk = gkl[p / cols];
          dmu += gk * static_cast<acc_t>(m[p]);
          dlv += gk * kl_normal_grad_logvar(lvp);
        }
        gm[p] = static_cast<scalar_t>(dmu);
        glv[p] = static_cast<scalar_t>(dlv);
      }
    });
  });
  return {grad_mu, grad_logvar};
}

}  // namespace cpu
}  // namespace fastvae
