// KL(N(mu_q, diag e^logvar_q) || N(mu_p, diag e^logvar_p)) per row and its backward, alone and
// fused with the sample of q (mirrors csrc/cpu/kl_normal.cpp). The prior's operands broadcast over
// q's rows (row r reads row r % rows); their gradients are written in the same pass when they have
// every row, else summed over the repeats by launch.cuh's repeat_sums.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/checks.h"
#include "cuda/draw.cuh"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

template <typename scalar_t, int V>
struct OperandPacks {
  Pack<scalar_t, V> mq, lq, mp, lp;
};

// The four operands of a call, with the prior's row counts.
template <typename scalar_t>
struct Operands {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* mq;
  const scalar_t* lq;
  const scalar_t* mp;
  const scalar_t* lp;
  int64_t cols, mp_rows, lp_rows;

  template <int V>
  __device__ OperandPacks<scalar_t, V> load(int64_t r, int64_t j) const {
    const int64_t i = r * cols + j;
    return {load_pack<V>(mq + i), load_pack<V>(lq + i), load_pack<V>(mp + (r % mp_rows) * cols + j),
            load_pack<V>(lp + (r % lp_rows) * cols + j)};
  }

  // g times the KL's gradients at one element (the repeat sums of a broadcast prior).
  __device__ KlNormalGrads<acc_t> grads(int64_t r, int64_t j, acc_t g) const {
    const int64_t i = r * cols + j;
    return kl_normal_term_grads(static_cast<acc_t>(mq[i]), static_cast<acc_t>(lq[i]),
                                static_cast<acc_t>(mp[(r % mp_rows) * cols + j]),
                                static_cast<acc_t>(lp[(r % lp_rows) * cols + j]), g);
  }
};

template <typename scalar_t>
Operands<scalar_t> operands(const at::Tensor& mu_q, const at::Tensor& logvar_q, const at::Tensor& mu_p,
                            const at::Tensor& logvar_p) {
  return {mu_q.const_data_ptr<scalar_t>(), logvar_q.const_data_ptr<scalar_t>(), mu_p.const_data_ptr<scalar_t>(),
          logvar_p.const_data_ptr<scalar_t>(), mu_q.size(1), mu_p.size(0), logvar_p.size(0)};
}

template <int V, typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ acc_t kl_pack_sum(const OperandPacks<scalar_t, V>& p) {
  acc_t s = 0;
#pragma unroll
  for (int v = 0; v < V; ++v)
    s += kl_normal_term(static_cast<acc_t>(p.mq.v[v]), static_cast<acc_t>(p.lq.v[v]), static_cast<acc_t>(p.mp.v[v]),
                        static_cast<acc_t>(p.lp.v[v]));
  return s;
}

// Gradient outputs: q's always; a prior's only when it has every row (else null: repeat sums).
template <typename scalar_t>
struct GradOutputs {
  scalar_t* mq;
  scalar_t* lq;
  scalar_t* mp;
  scalar_t* lp;
};

// The KL's gradients for the row's incoming gradient g at the pack p of flat index i, plus the
// sample's (wide_g, wide_g_eps: the per-sample sums of grad_z and grad_z * eps) when given.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_grads(const OperandPacks<scalar_t, V>& p, acc_t g, const double* wide_g,
                                            const double* wide_g_eps, int64_t i, const GradOutputs<scalar_t>& o) {
  Pack<scalar_t, V> gmq, glq, gmp, glp;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const acc_t lq = static_cast<acc_t>(p.lq.v[v]);
    const auto d = kl_normal_term_grads(static_cast<acc_t>(p.mq.v[v]), lq, static_cast<acc_t>(p.mp.v[v]),
                                        static_cast<acc_t>(p.lp.v[v]), g);
    acc_t dmq = d.mu_q, dlq = d.logvar_q;
    if (wide_g) {  // dz/dlogvar = eps * e^(logvar/2) / 2
      dmq += static_cast<acc_t>(wide_g[v]);
      dlq += static_cast<acc_t>(wide_g_eps[v]) * acc_t(0.5) * std_dev(lq);
    }
    gmq.v[v] = static_cast<scalar_t>(dmq);
    glq.v[v] = static_cast<scalar_t>(dlq);
    gmp.v[v] = static_cast<scalar_t>(d.mu_p);
    glp.v[v] = static_cast<scalar_t>(d.logvar_p);
  }
  store_pack<V>(o.mq + i, gmq);
  store_pack<V>(o.lq + i, glq);
  if (o.mp) store_pack<V>(o.mp + i, gmp);
  if (o.lp) store_pack<V>(o.lp + i, glp);
}

template <typename scalar_t>
struct KlNormalRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  Operands<scalar_t> a;

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(a.cols, a.mq, a.lq, a.mp, a.lp); }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    return kl_pack_sum<V>(a.template load<V>(r, j));
  }
};

// The KL's gradients, and with grad_z the sample's too (eps drawn again from state).
template <typename scalar_t>
struct KlNormalGradsFn {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  Operands<scalar_t> a;
  const acc_t* grad;
  GradOutputs<scalar_t> o;
  const scalar_t* grad_z = nullptr;  // null: the KL alone
  const int64_t* state = nullptr;
  int64_t n = 0, samples = 0;

  bool packs_fit() const {
    return cuda_detail::packs_fit<kPack>(a.cols, a.mq, a.lq, a.mp, a.lp, o.mq, o.lq, o.mp, o.lp, grad_z);
  }

  template <int V>
  __device__ void map(int64_t r, int64_t j) const {
    const int64_t i = r * a.cols + j;
    const auto p = a.template load<V>(r, j);
    if (!grad_z) {
      store_grads<V>(p, grad[r], nullptr, nullptr, i, o);
      return;
    }
    double wide_g[V], wide_g_eps[V];
    sample_grad_sums<V>(read_state(state), grad_z, n, samples, i, wide_g, wide_g_eps);
    store_grads<V>(p, grad[r], wide_g, wide_g_eps, i, o);
  }
};

// z for every sample and the KL row sums, reading the four operands once.
template <typename scalar_t>
struct SampleAndKlNormalRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  Operands<scalar_t> a;
  at::PhiloxCudaState philox;
  int64_t* state_out;
  scalar_t* z;
  int64_t n, samples;

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(a.cols, a.mq, a.lq, a.mp, a.lp, z); }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    const int64_t i = r * a.cols + j;
    const auto p = a.template load<V>(r, j);
    acc_t mean[V], sd[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      mean[v] = static_cast<acc_t>(p.mq.v[v]);
      sd[v] = std_dev(static_cast<acc_t>(p.lq.v[v]));
    }
    draw_samples<V>(unpack_state(philox, state_out, i == 0), mean, sd, z, n, samples, i);
    return kl_pack_sum<V>(p);
  }
};

// One element's gradient of a broadcast prior operand (mu_p, or logvar_p for kLogvar), for
// repeat_sums.
template <typename scalar_t, bool kLogvar>
struct PriorGradTerm {
  using acc_t = at::opmath_type<scalar_t>;
  Operands<scalar_t> a;
  const acc_t* g;
  __device__ acc_t operator()(int64_t r, int64_t j) const {
    const auto d = a.grads(r, j, g[r]);
    return kLogvar ? d.logvar_p : d.mu_p;
  }
};

// Both prior operands' gradients of one element, for repeat_sums_pair.
template <typename scalar_t>
struct PriorGradPair {
  using acc_t = at::opmath_type<scalar_t>;
  Operands<scalar_t> a;
  const acc_t* g;
  __device__ AccPair<acc_t> operator()(int64_t r, int64_t j) const {
    const auto d = a.grads(r, j, g[r]);
    return {d.mu_p, d.logvar_p};
  }
};

// The four gradients' tensors: q's and every-row priors' allocated (the kernels write them), the
// broadcast priors' summed over the repeats afterwards by finish().
struct GradTensors {
  at::Tensor mq, lq, mp, lp;
  GradTensors(const at::Tensor& mu_q, const at::Tensor& logvar_q, const at::Tensor& mu_p, const at::Tensor& logvar_p)
      : mq(at::empty_like(mu_q)), lq(at::empty_like(logvar_q)) {
    if (mu_p.size(0) == mu_q.size(0)) mp = at::empty_like(mu_p);
    if (logvar_p.size(0) == mu_q.size(0)) lp = at::empty_like(logvar_p);
  }
  template <typename scalar_t>
  GradOutputs<scalar_t> pointers() {
    return {mq.mutable_data_ptr<scalar_t>(), lq.mutable_data_ptr<scalar_t>(),
            mp.defined() ? mp.mutable_data_ptr<scalar_t>() : nullptr,
            lp.defined() ? lp.mutable_data_ptr<scalar_t>() : nullptr};
  }
  template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
  TensorQuad finish(const Operands<scalar_t>& a, const at::Tensor& mu_p, const at::Tensor& logvar_p, int64_t rows,
                    const acc_t* g) {
    const auto acc_opts = mu_p.options().dtype(acc_dtype(mu_p.scalar_type()));
    if (!mp.defined() && !lp.defined() && mu_p.sizes() == logvar_p.sizes()) {
      // Both broadcast alike: both sums from one walk (two launches, each term computed once).
      auto sums = at::empty({2, mu_p.size(0), mu_p.size(1)}, acc_opts);
      repeat_sums_pair<acc_t>(rows, mu_p.size(0), a.cols, sums.mutable_data_ptr<acc_t>(), acc_opts,
                              PriorGradPair<scalar_t>{a, g});
      return {mq, lq, sums[0].to(mu_p.scalar_type()), sums[1].to(logvar_p.scalar_type())};
    }
    if (!mp.defined()) {
      auto sums = at::empty(mu_p.sizes(), acc_opts);
      repeat_sums<acc_t>(rows, mu_p.size(0), a.cols, sums.mutable_data_ptr<acc_t>(), acc_opts,
                         PriorGradTerm<scalar_t, false>{a, g});
      mp = sums.to(mu_p.scalar_type());
    }
    if (!lp.defined()) {
      auto sums = at::empty(logvar_p.sizes(), acc_opts);
      repeat_sums<acc_t>(rows, logvar_p.size(0), a.cols, sums.mutable_data_ptr<acc_t>(), acc_opts,
                         PriorGradTerm<scalar_t, true>{a, g});
      lp = sums.to(logvar_p.scalar_type());
    }
    return {mq, lq, mp, lp};
  }
};

}  // namespace

at::Tensor kl_normal(const at::Tensor& mu_q, const at::Tensor& logvar_q, const at::Tensor& mu_p,
                     const at::Tensor& logvar_p) {
  check_kl_normal(mu_q, "mu_q", logvar_q, "logvar_q", mu_p, "mu_p", logvar_p, "logvar_p");
  const c10::cuda::CUDAGuard guard(mu_q.device());
  auto acc_opts = mu_q.options().dtype(acc_dtype(mu_q.scalar_type()));
  auto kl = at::empty({mu_q.size(0)}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu_q.scalar_type(), "kl_normal_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const KlNormalRows<scalar_t> rows{operands<scalar_t>(mu_q, logvar_q, mu_p, logvar_p)};
    row_sums<acc_t>(mu_q.size(0), mu_q.size(1), kl.mutable_data_ptr<acc_t>(), acc_opts, rows);
  });
  return kl;
}

TensorQuad kl_normal_backward(const at::Tensor& grad, const at::Tensor& mu_q, const at::Tensor& logvar_q,
                              const at::Tensor& mu_p, const at::Tensor& logvar_p) {
  check_kl_normal(mu_q, "mu_q", logvar_q, "logvar_q", mu_p, "mu_p", logvar_p, "logvar_p");
  check_row_grad(grad, mu_q, "mu_q");
  const c10::cuda::CUDAGuard guard(mu_q.device());
  GradTensors out(mu_q, logvar_q, mu_p, logvar_p);
  TensorQuad result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu_q.scalar_type(), "kl_normal_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto a = operands<scalar_t>(mu_q, logvar_q, mu_p, logvar_p);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    row_map(mu_q.size(0), mu_q.size(1), KlNormalGradsFn<scalar_t>{a, g, out.pointers<scalar_t>()});
    result = out.finish<scalar_t>(a, mu_p, logvar_p, mu_q.size(0), g);
  });
  return result;
}

TensorTriple reparameterize_with_kl_normal(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& prior_mu,
                                           const at::Tensor& prior_logvar, std::optional<int64_t> num_samples,
                                           std::optional<at::Generator> generator,
                                           const std::optional<at::Tensor>& rng_state) {
  check_kl_normal(mu, "mu", logvar, "logvar", prior_mu, "prior_mu", prior_logvar, "prior_logvar");
  const int64_t samples = num_samples.value_or(1);
  check_sampling_call(mu, logvar, samples, rng_state);
  const c10::cuda::CUDAGuard guard(mu.device());
  auto z = num_samples.has_value() ? at::empty({samples, mu.size(0), mu.size(1)}, mu.options()) : at::empty_like(mu);
  auto state = at::empty({2}, mu.options().dtype(at::kLong));
  auto acc_opts = mu.options().dtype(acc_dtype(mu.scalar_type()));
  auto kl = at::empty({mu.size(0)}, acc_opts);
  const auto philox = sampling_philox(mu, generator, rng_state);
  if (mu.numel() == 0) record_state(philox, state);  // no element's thread records it
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_with_kl_normal_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const SampleAndKlNormalRows<scalar_t> rows{operands<scalar_t>(mu, logvar, prior_mu, prior_logvar), philox,
                                               state.mutable_data_ptr<int64_t>(), z.mutable_data_ptr<scalar_t>(),
                                               mu.numel(), samples};
    row_sums<acc_t>(mu.size(0), mu.size(1), kl.mutable_data_ptr<acc_t>(), acc_opts, rows);
  });
  return {z, kl, state};
}

TensorQuad reparameterize_with_kl_normal_backward(const at::Tensor& grad_z, const at::Tensor& mu,
                                                  const at::Tensor& logvar, const at::Tensor& prior_mu,
                                                  const at::Tensor& prior_logvar, const at::Tensor& rng_state,
                                                  const at::Tensor& grad_kl) {
  check_kl_normal(mu, "mu", logvar, "logvar", prior_mu, "prior_mu", prior_logvar, "prior_logvar");
  check_sampling_backward(grad_z, mu, logvar, rng_state, grad_kl);
  TORCH_CHECK(grad_kl.defined(), "fastvae: grad_kl must be given");
  const c10::cuda::CUDAGuard guard(mu.device());
  GradTensors out(mu, logvar, prior_mu, prior_logvar);
  TensorQuad result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(),
                                  "reparameterize_with_kl_normal_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto a = operands<scalar_t>(mu, logvar, prior_mu, prior_logvar);
    const acc_t* g = grad_kl.const_data_ptr<acc_t>();
    row_map(mu.size(0), mu.size(1),
            KlNormalGradsFn<scalar_t>{a, g, out.pointers<scalar_t>(), grad_z.const_data_ptr<scalar_t>(),
                                      rng_state.const_data_ptr<int64_t>(), mu.numel(), grad_z_samples(grad_z, mu)});
    result = out.finish<scalar_t>(a, prior_mu, prior_logvar, mu.size(0), g);
  });
  return result;
}

}  // namespace cuda
}  // namespace fastvae
