// Reparameterised sampling z = mu + e^(logvar/2) * eps with eps drawn from the Philox stream of
// csrc/common/philox.h. eps is never stored: the backward pass draws it again from rng_state.
// Trade on the CPU (EPYC, 2 threads, AVX-512 build, (4096, 64) float32): the backward pass with
// its draw takes 0.19 ms; one over a stored eps would be an elementwise pass like the KL's
// backward (0.04 ms), but would keep 4 bytes per element alive from forward to backward (the
// memory CUDA avoids too). Regenerating, fwd+bwd is already 2.1x the eager randn version, so the
// CPU keeps regenerating, like CUDA, and the op signatures stay one.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "cpu/normals.h"
#include "cpu/outputs.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

using namespace draw;

namespace {

// grad_mu = sum g (+ gk * mu), grad_logvar = sum(g eps) e^(logvar/2) / 2 (+ gk (e^logvar - 1) / 2)
// over len elements of one row; gk is the row's KL gradient (0 when there is none).
template <typename acc_t, typename scalar_t>
void finish_run(scalar_t* gm, scalar_t* glv, const scalar_t* m, const scalar_t* lv, const acc_t* sg,
                const acc_t* sge, bool has_kl, acc_t gk, int64_t len) {
  constexpr int64_t V = Vec<acc_t>::size();
  const Vec<acc_t> half(acc_t(0.5)), gkv(gk);
  int64_t j = 0;
  for (; j + V <= len; j += V) {
    const auto lvv = load_widened<acc_t>(lv + j);
    auto dmu = Vec<acc_t>::loadu(sg + j);
    auto dlv = Vec<acc_t>::loadu(sge + j) * half * std_dev(lvv);
    if (has_kl) {
      dmu = at::vec::fmadd(gkv, load_widened<acc_t>(m + j), dmu);
      dlv = dlv + kl_std_normal_grad_logvar(lvv, gkv);
    }
    store_narrowed<acc_t>(gm + j, dmu);
    store_narrowed<acc_t>(glv + j, dlv);
  }
  for (; j < len; ++j) {
    const acc_t lvj = static_cast<acc_t>(lv[j]);
    acc_t dmu = sg[j], dlv = sge[j] * acc_t(0.5) * std_dev(lvj);
    if (has_kl) {
      dmu += gk * static_cast<acc_t>(m[j]);
      dlv += kl_std_normal_grad_logvar(lvj, gk);
    }
    gm[j] = static_cast<scalar_t>(dmu);
    glv[j] = static_cast<scalar_t>(dlv);
  }
}

// z = mu + e^(logvar/2) * eps for num_samples draws of eps from the stream of rng_state.
at::Tensor sample(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& rng_state,
                  int64_t num_samples) {
  std::vector<int64_t> shape{num_samples};
  shape.insert(shape.end(), mu.sizes().begin(), mu.sizes().end());
  auto z = large_output(at::empty(shape, mu.options()));
  const PhiloxState st = read_state(rng_state);
  const int64_t n = mu.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    draw_z<acc_t>(mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(), z.mutable_data_ptr<scalar_t>(),
                  n, num_samples, st, [](int64_t, int64_t) {});
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
  check_sampling_backward(grad_z, mu, logvar, rng_state, grad_kl);
  const int64_t n = mu.numel();
  auto grad_mu = large_output(at::empty_like(mu));
  auto grad_logvar = large_output(at::empty_like(logvar));
  const PhiloxState st = read_state(rng_state);
  const int64_t samples = grad_z_samples(grad_z, mu);
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
    // Tiles of the element index; each sums its samples in sample order (sample_grad_sums).
    sample_grad_tiles<acc_t>(st, g, n, samples, [&](int64_t p0, int64_t len, const acc_t* sg, const acc_t* sge) {
      // Runs within one row of mu, which share the row's KL gradient.
      for (int64_t q = 0; q < len;) {
        const int64_t p = p0 + q, r = gkl ? p / cols : 0;
        const int64_t run = gkl ? std::min(len - q, (r + 1) * cols - p) : len - q;
        finish_run<acc_t>(gm + p, glv + p, m + p, lv + p, sg + q, sge + q, gkl != nullptr, gkl ? gkl[r] : acc_t(0),
                          run);
        q += run;
      }
    });
  });
  return {grad_mu, grad_logvar};
}

}  // namespace cpu
}  // namespace fastvae
