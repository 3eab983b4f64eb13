// KL(N(mu_q, diag e^logvar_q) || N(mu_p, diag e^logvar_p)) per row and its backward, alone and
// fused with the reparameterised sample of q (the sampler's draw, csrc/cpu/normals.h: the same eps
// as fastvae::reparameterize for the same state). The prior's mean and log-variance each have
// rows / k rows, broadcast over q's rows (row r reads row r % k); their gradients are summed back.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "cpu/normals.h"
#include "cpu/outputs.h"
#include "cpu/row_reduce.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

using namespace draw;

namespace {

// Loads and stores of one lane type: a vector of acc_t (widened from scalar_t) or one acc_t.
template <typename acc_t, bool kVec>
struct Lane {
  using T = Vec<acc_t>;
  template <typename S>
  static T load(const S* p) { return load_widened<acc_t>(p); }
  template <typename S>
  static void store(S* p, const T& v) { store_narrowed<acc_t>(p, v); }
};
template <typename acc_t>
struct Lane<acc_t, false> {
  using T = acc_t;
  template <typename S>
  static T load(const S* p) { return static_cast<acc_t>(*p); }
  template <typename S>
  static void store(S* p, T v) { *p = static_cast<S>(v); }
};

// The four operands of a call, with the prior's row counts.
template <typename scalar_t>
struct Operands {
  const scalar_t* mq;
  const scalar_t* lq;
  const scalar_t* mp;
  const scalar_t* lp;
  int64_t cols, mp_rows, lp_rows;

  Operands(const at::Tensor& mu_q, const at::Tensor& logvar_q, const at::Tensor& mu_p, const at::Tensor& logvar_p)
      : mq(mu_q.const_data_ptr<scalar_t>()), lq(logvar_q.const_data_ptr<scalar_t>()),
        mp(mu_p.const_data_ptr<scalar_t>()), lp(logvar_p.const_data_ptr<scalar_t>()), cols(mu_q.size(1)),
        mp_rows(mu_p.size(0)), lp_rows(logvar_p.size(0)) {}

  // The KL terms at row r, columns j .. (one lane of L).
  template <typename L>
  typename L::T kl(int64_t r, int64_t j) const {
    const int64_t i = r * cols + j;
    return kl_normal_term(L::load(mq + i), L::load(lq + i), L::load(mp + (r % mp_rows) * cols + j),
                          L::load(lp + (r % lp_rows) * cols + j));
  }

  template <typename L>
  KlNormalGrads<typename L::T> grads(int64_t r, int64_t j, typename L::T g) const {
    const int64_t i = r * cols + j;
    return kl_normal_term_grads(L::load(mq + i), L::load(lq + i), L::load(mp + (r % mp_rows) * cols + j),
                                L::load(lp + (r % lp_rows) * cols + j), g);
  }
};

// Gradient outputs: q's always; a prior's only when it has every row (else null: repeat sums).
template <typename scalar_t>
struct GradOutputs {
  scalar_t* mq;
  scalar_t* lq;
  scalar_t* mp;
  scalar_t* lp;
};

// The gradients at row r, columns j .. (one lane of L) for the row's incoming gradient g, plus,
// when sg is given, the sample's: sum g_k to mu_q, sum (g_k eps_k) e^(logvar_q/2) / 2 to logvar_q
// (sg, sge at the same lane, of the per-sample sums).
template <typename L, typename acc_t, typename scalar_t>
void store_grads(const Operands<scalar_t>& a, const GradOutputs<scalar_t>& o, int64_t r, int64_t j, acc_t g,
                 const acc_t* sg = nullptr, const acc_t* sge = nullptr) {
  using T = typename L::T;
  const int64_t i = r * a.cols + j;
  const auto d = a.template grads<L>(r, j, T(g));
  T dmq = d.mu_q, dlq = d.logvar_q;
  if (sg) {
    dmq = dmq + L::load(sg);
    dlq = dlq + L::load(sge) * T(acc_t(0.5)) * std_dev(L::load(a.lq + i));
  }
  L::store(o.mq + i, dmq);
  L::store(o.lq + i, dlq);
  if (o.mp) L::store(o.mp + i, d.mu_p);
  if (o.lp) L::store(o.lp + i, d.logvar_p);
}

// The gradient of a prior operand with fewer rows than q: its terms summed over the repeats
// (row_reduce.h's repeat_sums, in acc_t, in row order), then cast to the operand's dtype.
template <typename acc_t, typename scalar_t>
at::Tensor prior_grad_by_repeats(const Operands<scalar_t>& a, const at::Tensor& prior, int64_t rows, const acc_t* g,
                                 bool logvar) {
  auto out = at::empty(prior.sizes(), prior.options().dtype(acc_dtype(prior.scalar_type())));
  repeat_sums<acc_t>(rows, prior.size(0), a.cols, out.mutable_data_ptr<acc_t>(), [&](int64_t r, int64_t j) {
    const auto d = a.template grads<Lane<acc_t, false>>(r, j, g[r]);
    return logvar ? d.logvar_p : d.mu_p;
  });
  return out.to(prior.scalar_type());
}

// The four gradients' tensors: q's and every-row priors' allocated (the kernel writes them), the
// broadcast priors' left undefined for prior_grad_by_repeats.
struct GradTensors {
  at::Tensor mq, lq, mp, lp;
  GradTensors(const at::Tensor& mu_q, const at::Tensor& logvar_q, const at::Tensor& mu_p, const at::Tensor& logvar_p)
      : mq(large_output(at::empty_like(mu_q))), lq(large_output(at::empty_like(logvar_q))) {
    if (mu_p.size(0) == mu_q.size(0)) mp = large_output(at::empty_like(mu_p));
    if (logvar_p.size(0) == mu_q.size(0)) lp = large_output(at::empty_like(logvar_p));
  }
  template <typename scalar_t>
  GradOutputs<scalar_t> pointers() {
    return {mq.mutable_data_ptr<scalar_t>(), lq.mutable_data_ptr<scalar_t>(),
            mp.defined() ? mp.mutable_data_ptr<scalar_t>() : nullptr,
            lp.defined() ? lp.mutable_data_ptr<scalar_t>() : nullptr};
  }
  // The broadcast priors' gradients, after the kernel.
  template <typename acc_t, typename scalar_t>
  TensorQuad finish(const Operands<scalar_t>& a, const at::Tensor& mu_p, const at::Tensor& logvar_p, int64_t rows,
                    const acc_t* g) {
    if (!mp.defined() && !lp.defined() && a.mp_rows == a.lp_rows) {
      // Both broadcast alike: both sums from one walk over q's rows (each term computed once).
      auto acc_opts = mu_p.options().dtype(acc_dtype(mu_p.scalar_type()));
      auto smp = at::empty(mu_p.sizes(), acc_opts), slp = at::empty(logvar_p.sizes(), acc_opts);
      repeat_sums_pair<acc_t>(rows, a.mp_rows, a.cols, smp.mutable_data_ptr<acc_t>(), slp.mutable_data_ptr<acc_t>(),
                              [&](int64_t r, int64_t j) {
                                const auto d = a.template grads<Lane<acc_t, false>>(r, j, g[r]);
                                return std::make_pair(d.mu_p, d.logvar_p);
                              });
      return {mq, lq, smp.to(mu_p.scalar_type()), slp.to(logvar_p.scalar_type())};
    }
    if (!mp.defined()) mp = prior_grad_by_repeats<acc_t>(a, mu_p, rows, g, false);
    if (!lp.defined()) lp = prior_grad_by_repeats<acc_t>(a, logvar_p, rows, g, true);
    return {mq, lq, mp, lp};
  }
};

}  // namespace

at::Tensor kl_normal(const at::Tensor& mu_q, const at::Tensor& logvar_q, const at::Tensor& mu_p,
                     const at::Tensor& logvar_p) {
  check_kl_normal(mu_q, "mu_q", logvar_q, "logvar_q", mu_p, "mu_p", logvar_p, "logvar_p");
  auto kl = at::empty({mu_q.size(0)}, mu_q.options().dtype(acc_dtype(mu_q.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu_q.scalar_type(), "kl_normal", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Operands<scalar_t> a(mu_q, logvar_q, mu_p, logvar_p);
    row_sums<acc_t>(
        mu_q.size(0), a.cols, kl.mutable_data_ptr<acc_t>(),
        [&](int64_t r, int64_t j) { return a.template kl<Lane<acc_t, true>>(r, j); },
        [&](int64_t r, int64_t j) { return a.template kl<Lane<acc_t, false>>(r, j); });
  });
  return kl;
}

TensorQuad kl_normal_backward(const at::Tensor& grad, const at::Tensor& mu_q, const at::Tensor& logvar_q,
                              const at::Tensor& mu_p, const at::Tensor& logvar_p) {
  check_kl_normal(mu_q, "mu_q", logvar_q, "logvar_q", mu_p, "mu_p", logvar_p, "logvar_p");
  check_row_grad(grad, mu_q, "mu_q");
  GradTensors out(mu_q, logvar_q, mu_p, logvar_p);
  TensorQuad result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu_q.scalar_type(), "kl_normal_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Operands<scalar_t> a(mu_q, logvar_q, mu_p, logvar_p);
    const GradOutputs<scalar_t> o = out.pointers<scalar_t>();
    const acc_t* g = grad.const_data_ptr<acc_t>();
    row_map<acc_t>(
        mu_q.size(0), a.cols, [&](int64_t r, int64_t j) { store_grads<Lane<acc_t, true>>(a, o, r, j, g[r]); },
        [&](int64_t r, int64_t j) { store_grads<Lane<acc_t, false>>(a, o, r, j, g[r]); });
    result = out.finish<acc_t>(a, mu_p, logvar_p, mu_q.size(0), g);
  });
  return result;
}

// One pass: the sampler's tiles (draw_z, so z is reparameterize's to the last bit), and after each
// tile the KL row sums of the rows that end in it, while the four operands' rows are in cache.
TensorTriple reparameterize_with_kl_normal(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& prior_mu,
                                           const at::Tensor& prior_logvar, std::optional<int64_t> num_samples,
                                           std::optional<at::Generator> generator,
                                           const std::optional<at::Tensor>& rng_state) {
  check_kl_normal(mu, "mu", logvar, "logvar", prior_mu, "prior_mu", prior_logvar, "prior_logvar");
  const int64_t samples = num_samples.value_or(1);
  check_sampling_call(mu, logvar, samples, rng_state);
  auto state = sampling_state(mu, generator, rng_state);
  const int64_t rows = mu.size(0), cols = mu.size(1), n = mu.numel();
  auto z = large_output(num_samples.has_value() ? at::empty({samples, rows, cols}, mu.options()) : at::empty_like(mu));
  auto kl = at::empty({rows}, mu.options().dtype(acc_dtype(mu.scalar_type())));
  if (n == 0) return {z, kl.zero_(), state};  // no tile: the rows (if any) sum nothing
  const PhiloxState st = read_state(state);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_with_kl_normal", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Operands<scalar_t> a(mu, logvar, prior_mu, prior_logvar);
    acc_t* klp = kl.mutable_data_ptr<acc_t>();
    draw_z<acc_t>(a.mq, a.lq, z.mutable_data_ptr<scalar_t>(), n, samples, st, [&](int64_t i0, int64_t len) {
      // The rows of the first sample whose last element is in [i0, i0 + len).
      for (int64_t r = i0 / cols, r1 = std::min(i0 + len, n) / cols; i0 < n && r < r1; ++r)
        klp[r] = static_cast<acc_t>(detail::range_sum<acc_t>(
            r, 0, cols, cols, [&](int64_t rr, int64_t j) { return a.template kl<Lane<acc_t, true>>(rr, j); },
            [&](int64_t rr, int64_t j) { return a.template kl<Lane<acc_t, false>>(rr, j); }));
    });
  });
  return {z, kl, state};
}

// Tiles of mu's elements as in reparameterize_backward: the samples' gradient sums, then per row
// run the KL's four gradients for the row's grad_kl added in, in the same pass.
TensorQuad reparameterize_with_kl_normal_backward(const at::Tensor& grad_z, const at::Tensor& mu,
                                                  const at::Tensor& logvar, const at::Tensor& prior_mu,
                                                  const at::Tensor& prior_logvar, const at::Tensor& rng_state,
                                                  const at::Tensor& grad_kl) {
  check_kl_normal(mu, "mu", logvar, "logvar", prior_mu, "prior_mu", prior_logvar, "prior_logvar");
  check_sampling_backward(grad_z, mu, logvar, rng_state, grad_kl);
  TORCH_CHECK(grad_kl.defined(), "fastvae: grad_kl must be given");
  GradTensors out(mu, logvar, prior_mu, prior_logvar);
  TensorQuad result;
  const PhiloxState st = read_state(rng_state);
  const int64_t n = mu.numel(), cols = mu.size(1), samples = grad_z_samples(grad_z, mu);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_with_kl_normal_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int64_t V = Vec<acc_t>::size();
    const Operands<scalar_t> a(mu, logvar, prior_mu, prior_logvar);
    const GradOutputs<scalar_t> o = out.pointers<scalar_t>();
    const scalar_t* g = grad_z.const_data_ptr<scalar_t>();
    const acc_t* gkl = grad_kl.const_data_ptr<acc_t>();
    sample_grad_tiles<acc_t>(st, g, n, samples, [&](int64_t p0, int64_t len, const acc_t* sg, const acc_t* sge) {
      for (int64_t q = 0; q < len;) {  // runs within one row, which share the row's grad_kl
        const int64_t p = p0 + q, r = p / cols, j0 = p - r * cols;
        const int64_t run = std::min(len - q, cols - j0);
        int64_t j = 0;
        for (; j + V <= run; j += V) store_grads<Lane<acc_t, true>>(a, o, r, j0 + j, gkl[r], sg + q + j, sge + q + j);
        for (; j < run; ++j) store_grads<Lane<acc_t, false>>(a, o, r, j0 + j, gkl[r], sg + q + j, sge + q + j);
        q += run;
      }
    });
    result = out.finish<acc_t>(a, prior_mu, prior_logvar, mu.size(0), gkl);
  });
  return result;
}

}  // namespace cpu
}  // namespace fastvae
