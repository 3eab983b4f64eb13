// Discretized logistic log-likelihoods per image, mirroring csrc/cpu/discretized_logistic.cpp:
// one thread per pixel (per subpixel for one logistic), the row sums of launch.cuh (fixed order,
// deterministic). The mixture takes two passes over its components: the log-sum-exp online, then
// the components again with their posterior weights to write the gradients (recomputed rather
// than kept: registers, not memory). A level out of range makes its image's value NaN (checking
// it on the host would cost a device sync).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "common/discretized_logistic.h"
#include "common/discretized_logistic_checks.h"
#include "common/philox.h"
#include "cuda/draw.cuh"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

// The data of one pixel's channel: value, bin-edge flags; false when the level is out of range.
template <typename acc_t>
__device__ __forceinline__ bool data_at(const void* x, int code, int64_t offset, int64_t top, acc_t* xv, acc_t* up,
                                        acc_t* down) {
  int64_t v = read_level(x, code, offset, top);
  const bool ok = v >= 0;
  if (!ok) v = 0;
  *xv = static_cast<acc_t>(level_value(v, top));
  *up = v < top ? acc_t(1) : acc_t(-1);
  *down = v > 0 ? acc_t(1) : acc_t(-1);
  return ok;
}

template <typename scalar_t>
struct MixRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = 1;
  const scalar_t* params;
  const void* x;
  scalar_t* grad;  // null: no gradient asked for
  int64_t pb, pk, ps, xb, xc, xs, gb, gk, gs, M, C, top;
  int code;

  bool packs_fit() const { return false; }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    acc_t xv[3], up[3], down[3];
    bool ok = true;
    for (int64_t c = 0; c < C; ++c) ok &= data_at(x, code, r * xb + c * xc + j * xs, top, &xv[c], &up[c], &down[c]);
    const scalar_t* base = params + r * pb + j * ps;
    const auto load = [&](int64_t k) { return static_cast<acc_t>(base[k * pk]); };
    const acc_t h = static_cast<acc_t>(1.0 / static_cast<double>(top));
    const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
    acc_t best = ninf, z = 0, best_l = ninf, z_l = 0;
    for (int64_t m = 0; m < M; ++m) {  // online log-sum-exp of the components and of the logits
      const acc_t t = mix_component<acc_t>(load, m, M, C, xv, up, down, h).total, l = load(m);
      if (t > best) z = z * fv_exp(best - t) + acc_t(1), best = t; else z += fv_exp(t - best);
      if (l > best_l) z_l = z_l * fv_exp(best_l - l) + acc_t(1), best_l = l; else z_l += fv_exp(l - best_l);
    }
    const acc_t lse = best + dl_log(z), lse_l = best_l + dl_log(z_l);
    if (grad) {
      scalar_t* g = grad + r * gb + j * gs;
      for (int64_t m = 0; m < M; ++m) {
        const MixComponent<acc_t> comp = mix_component<acc_t>(load, m, M, C, xv, up, down, h);
        const acc_t w = fv_exp(comp.total - lse);
        g[m * gk] = static_cast<scalar_t>(w - fv_exp(load(m) - lse_l));
        for (int64_t c = 0; c < C; ++c) {
          const int64_t blk = mix_block(c, M, C);
          g[(blk + m) * gk] = static_cast<scalar_t>(w * comp.d_mean[c]);
          g[(blk + M + m) * gk] = static_cast<scalar_t>(w * comp.d_log_scale[c]);
          if (C == 3) g[(blk + 2 * M + m) * gk] = static_cast<scalar_t>(w * comp.d_coef[c]);
        }
      }
    }
    return ok ? lse - lse_l : std::numeric_limits<acc_t>::quiet_NaN();
  }
};

template <typename scalar_t>
struct LogisticRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = 1;
  const scalar_t *mean, *log_scale;
  const void* x;
  scalar_t *grad_mean, *grad_ls;  // null: no gradient asked for
  int64_t S, top;
  int64_t mb, mc, ms, lb, lc, ls, xb, xc, xs, gmb, gmc, gms, glb, glc, gls;
  int code;

  bool packs_fit() const { return false; }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    const int64_t c = j / S, p = j % S;
    acc_t xv, up, down;
    const bool ok = data_at(x, code, r * xb + c * xc + p * xs, top, &xv, &up, &down);
    const LogisticTerm<acc_t> t = logistic_term(xv, static_cast<acc_t>(mean[r * mb + c * mc + p * ms]),
                                                static_cast<acc_t>(log_scale[r * lb + c * lc + p * ls]),
                                                static_cast<acc_t>(1.0 / static_cast<double>(top)), up, down);
    if (grad_mean) {
      grad_mean[r * gmb + c * gmc + p * gms] = static_cast<scalar_t>(t.d_mean);
      grad_ls[r * glb + c * glc + p * gls] = static_cast<scalar_t>(t.d_log_scale);
    }
    return ok ? t.ll : std::numeric_limits<acc_t>::quiet_NaN();
  }
};

// ---------------------------------------------------------------- the samplers
// One thread per unit (a pixel of the mixture, a subpixel of one logistic), grid-stride, with the
// CPU kernels' per-unit math (common/discretized_logistic.h) and uniforms (unit q's are the flat
// indices q U .. q U + U - 1 of the call's stream): the CPU's levels for the same (seed, offset)
// up to the last bits of expf / logf / tanhf. A NaN draw gives level 0 (raising would cost a
// device sync). Levels (B, C, S) contiguous.
template <typename scalar_t, typename out_t>
__global__ void mix_sample_kernel(const scalar_t* params, int64_t pb, int64_t pk, int64_t ps, int64_t S,
                                  int64_t units, int64_t M, int64_t C, int64_t top, at::PhiloxCudaState philox,
                                  out_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState st = unpack_state(philox, nullptr, false);
  const int64_t U = M + C;
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < units; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = q / S, s = q % S;
    const scalar_t* base = params + b * pb + s * ps;
    const auto load = [&](int64_t k) { return static_cast<acc_t>(base[k * pk]); };
    PhiloxWords words(st);
    const auto uniform = [&](int64_t j) { return philox_open_unit<acc_t>(words(static_cast<uint64_t>(q * U + j))); };
    int64_t v[3];
    mix_sample<acc_t>(load, uniform, M, C, top, v);
    for (int64_t c = 0; c < C; ++c) out[(b * C + c) * S + s] = static_cast<out_t>(v[c] < 0 ? 0 : v[c]);
  }
}

template <typename scalar_t, typename out_t>
__global__ void logistic_sample_kernel(const scalar_t* mean, const scalar_t* log_scale, int64_t mb, int64_t mc,
                                       int64_t ms, int64_t lb, int64_t lc, int64_t ls, int64_t C, int64_t S,
                                       int64_t units, int64_t top, at::PhiloxCudaState philox, out_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhiloxState st = unpack_state(philox, nullptr, false);
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < units; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = q / (C * S), c = (q / S) % C, s = q % S;
    PhiloxWords words(st);
    const acc_t u = philox_open_unit<acc_t>(words(static_cast<uint64_t>(q)));
    const int64_t v = value_level(logistic_draw(static_cast<acc_t>(mean[b * mb + c * mc + s * ms]),
                                                static_cast<acc_t>(log_scale[b * lb + c * lc + s * ls]), u),
                                  top);
    out[q] = static_cast<out_t>(v < 0 ? 0 : v);
  }
}

}  // namespace

TensorPair discretized_mix_logistic_log_likelihood_with_grad(const at::Tensor& params, const at::Tensor& x,
                                                   int64_t num_mixtures, int64_t bits, bool compute_grad) {
  check_mix_logistic(params, x, num_mixtures, bits);
  const c10::cuda::CUDAGuard guard(params.device());
  auto acc_opts = params.options().dtype(acc_dtype(params.scalar_type()));
  auto ll = at::empty({params.size(0)}, acc_opts);
  at::Tensor grad = compute_grad ? grad_like(params) : at::Tensor();
  const int64_t top = (int64_t{1} << bits) - 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params.scalar_type(), "dmol_ll_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const MixRows<scalar_t> rows{params.const_data_ptr<scalar_t>(), x.const_data_ptr(),
                                 compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr,
                                 params.stride(0), params.stride(1), params.stride(2),
                                 x.stride(0), x.stride(1), x.stride(2),
                                 compute_grad ? grad.stride(0) : 0, compute_grad ? grad.stride(1) : 0,
                                 compute_grad ? grad.stride(2) : 0, num_mixtures, x.size(1), top,
                                 level_code(x.scalar_type())};
    row_sums<acc_t>(params.size(0), params.size(2), ll.mutable_data_ptr<acc_t>(), acc_opts, rows);
  });
  return {ll, compute_grad ? grad : at::empty({0}, params.options())};
}

TensorTriple discretized_logistic_log_likelihood_with_grad(const at::Tensor& mean, const at::Tensor& log_scale,
                                                 const at::Tensor& x, int64_t bits, bool compute_grad) {
  check_logistic(mean, log_scale, x, bits);
  const c10::cuda::CUDAGuard guard(mean.device());
  auto acc_opts = mean.options().dtype(acc_dtype(mean.scalar_type()));
  auto ll = at::empty({mean.size(0)}, acc_opts);
  at::Tensor gm = compute_grad ? grad_like(mean) : at::Tensor();
  at::Tensor gl = compute_grad ? grad_like(log_scale) : at::Tensor();
  const int64_t top = (int64_t{1} << bits) - 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "dlogistic_ll_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto st = [&](const at::Tensor& t, int d) { return compute_grad ? t.stride(d) : int64_t{0}; };
    const LogisticRows<scalar_t> rows{
        mean.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(), x.const_data_ptr(),
        compute_grad ? gm.mutable_data_ptr<scalar_t>() : nullptr,
        compute_grad ? gl.mutable_data_ptr<scalar_t>() : nullptr, mean.size(2), top,
        mean.stride(0), mean.stride(1), mean.stride(2), log_scale.stride(0), log_scale.stride(1), log_scale.stride(2),
        x.stride(0), x.stride(1), x.stride(2), st(gm, 0), st(gm, 1), st(gm, 2), st(gl, 0), st(gl, 1), st(gl, 2),
        level_code(x.scalar_type())};
    row_sums<acc_t>(mean.size(0), mean.size(1) * mean.size(2), ll.mutable_data_ptr<acc_t>(), acc_opts, rows);
  });
  if (!compute_grad) return {ll, at::empty({0}, mean.options()), at::empty({0}, mean.options())};
  return {ll, gm, gl};
}

at::Tensor sample_discretized_mix_logistic(const at::Tensor& params, int64_t num_mixtures, int64_t bits,
                                           std::optional<at::Generator> generator,
                                           const std::optional<at::Tensor>& rng_state) {
  const int64_t C = check_mix_sample(params, num_mixtures, bits, rng_state);
  const c10::cuda::CUDAGuard guard(params.device());
  const int64_t top = (int64_t{1} << bits) - 1, B = params.size(0), S = params.size(2);
  auto out = at::empty({B, C, S}, params.options().dtype(level_dtype(top + 1)));
  const auto philox = sampling_philox(params, generator, rng_state);
  const int64_t units = B * S;
  if (units == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params.scalar_type(), "dmol_sample_cuda", [&] {
    dispatch_level_type(out, [&](auto tag) {
      using out_t = decltype(tag);
      FASTVAE_LAUNCH(grid_for(units), kThreads, 0, stream, mix_sample_kernel<scalar_t, out_t>)(
          params.const_data_ptr<scalar_t>(), params.stride(0), params.stride(1), params.stride(2), S, units,
          num_mixtures, C, top, philox, out.mutable_data_ptr<out_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor sample_discretized_logistic(const at::Tensor& mean, const at::Tensor& log_scale, int64_t bits,
                                       std::optional<at::Generator> generator,
                                       const std::optional<at::Tensor>& rng_state) {
  check_logistic_sample(mean, log_scale, bits, rng_state);
  const c10::cuda::CUDAGuard guard(mean.device());
  const int64_t top = (int64_t{1} << bits) - 1;
  auto out = at::empty(mean.sizes(), mean.options().dtype(level_dtype(top + 1)));
  const auto philox = sampling_philox(mean, generator, rng_state);
  const int64_t units = mean.numel();
  if (units == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "dlogistic_sample_cuda", [&] {
    dispatch_level_type(out, [&](auto tag) {
      using out_t = decltype(tag);
      FASTVAE_LAUNCH(grid_for(units), kThreads, 0, stream, logistic_sample_kernel<scalar_t, out_t>)(
          mean.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(), mean.stride(0), mean.stride(1),
          mean.stride(2), log_scale.stride(0), log_scale.stride(1), log_scale.stride(2), mean.size(1),
          mean.size(2), units, top, philox, out.mutable_data_ptr<out_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace cuda
}  // namespace fastvae
