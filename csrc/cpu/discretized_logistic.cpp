// Discretized logistic log-likelihoods of 2^bits-level data (csrc/common/discretized_logistic.h):
// the NVAE / PixelCNN++ mixture and one logistic per subpixel, one row (image) per batch entry.
// Operands are (B, channels, pixels) of any strides; Vectorized<acc_t> lanes run over pixels
// (gathered when the pixel stride is not 1, e.g. channels-last). The gradients for an incoming
// gradient of 1 are written in the same pass. Rows are summed from fixed chunks of pixels, in
// order, so the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "cpu/vec_math.h"

namespace fastvae {
// Vectorized overloads of the dl_* functions, declared before the templates that call them.
template <typename T>
inline Vec<T> dl_log(const Vec<T>& v) { return v.log(); }
template <typename T>
inline Vec<T> dl_log1p(const Vec<T>& v) { return v.log1p(); }
template <typename T>
inline Vec<T> dl_expm1(const Vec<T>& v) { return v.expm1(); }
template <typename T>
inline Vec<T> dl_tanh(const Vec<T>& v) { return v.tanh(); }
}  // namespace fastvae

#include "common/discretized_logistic.h"
#include "common/discretized_logistic_checks.h"
#include "common/philox.h"
#include "cpu/normals.h"
#include "cpu/outputs.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

namespace {

constexpr int64_t kPixelChunk = 256;  // pixels per parallel task (a multiple of every vector width)

// n (<= V) elements at p, stride apart, widened into a vector; missing lanes repeat the first.
template <typename acc_t, typename S>
inline Vec<acc_t> gather(const S* p, int64_t stride, int64_t n) {
  constexpr int64_t V = Vec<acc_t>::size();
  if (stride == 1 && n == V) return load_widened<acc_t>(p);
  alignas(64) acc_t buf[V];
  for (int64_t i = 0; i < V; ++i) buf[i] = static_cast<acc_t>(p[(i < n ? i : 0) * stride]);
  return Vec<acc_t>::loadu(buf);
}

template <typename acc_t, typename S>
inline void scatter(S* p, int64_t stride, int64_t n, const Vec<acc_t>& v) {
  constexpr int64_t V = Vec<acc_t>::size();
  if (stride == 1 && n == V) return store_narrowed<acc_t>(p, v);
  alignas(64) acc_t buf[V];
  v.store(buf);
  for (int64_t i = 0; i < n; ++i) p[i * stride] = static_cast<S>(buf[i]);
}

// The data of n pixels of one channel: values in [-1, 1] and the bin-edge flags (>= 0: the bin
// has that edge). Out-of-range levels set *bad and read as level 0.
template <typename acc_t>
struct DataLanes {
  Vec<acc_t> x, up, down;
};

template <typename acc_t>
DataLanes<acc_t> data_lanes(const at::Tensor& x, int code, int64_t offset, int64_t stride, int64_t n, int64_t top,
                            bool* bad) {
  constexpr int64_t V = Vec<acc_t>::size();
  alignas(64) acc_t xv[V], up[V], down[V];
  const void* base = x.const_data_ptr();
  for (int64_t i = 0; i < V; ++i) {
    int64_t v = read_level(base, code, offset + (i < n ? i : 0) * stride, top);
    if (v < 0) {
      *bad = true;
      v = 0;
    }
    xv[i] = static_cast<acc_t>(level_value(v, top));
    up[i] = v < top ? acc_t(1) : acc_t(-1);
    down[i] = v > 0 ? acc_t(1) : acc_t(-1);
  }
  return {Vec<acc_t>::loadu(xv), Vec<acc_t>::loadu(up), Vec<acc_t>::loadu(down)};
}

template <typename acc_t>
inline double lane_sum(const Vec<acc_t>& v, int64_t n) {
  alignas(64) acc_t buf[Vec<acc_t>::size()];
  v.store(buf);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(buf[i]);
  return s;
}

// Runs body(b, c, j0, j1) -> double over every (row, chunk of channel-major work) and adds the
// results per row in a fixed order into ll.
template <typename acc_t, typename Body>
void chunked_rows(int64_t rows, int64_t groups, int64_t pixels, acc_t* ll, const Body& body) {
  const int64_t chunks = (pixels + kPixelChunk - 1) / kPixelChunk;
  const int64_t per_row = groups * chunks;
  std::vector<double> partial(static_cast<size_t>(rows * per_row));
  at::parallel_for(0, rows * per_row, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per_row, g = (t % per_row) / chunks, j0 = (t % chunks) * kPixelChunk;
      partial[t] = body(b, g, j0, std::min(pixels, j0 + kPixelChunk));
    }
  });
  for (int64_t b = 0; b < rows; ++b) {
    double s = 0;
    for (int64_t k = 0; k < per_row; ++k) s += partial[b * per_row + k];
    ll[b] = static_cast<acc_t>(s);
  }
}

template <typename scalar_t>
void mix_forward(const at::Tensor& params, const at::Tensor& x, int64_t M, int64_t top, at::Tensor& ll,
                 at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  using V_t = Vec<acc_t>;
  constexpr int64_t V = V_t::size();
  const int64_t B = params.size(0), C = x.size(1), S = params.size(2);
  const int64_t pb = params.stride(0), pk = params.stride(1), ps = params.stride(2);
  const int64_t xb = x.stride(0), xc = x.stride(1), xs = x.stride(2);
  const scalar_t* P = params.const_data_ptr<scalar_t>();
  scalar_t* G = grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t gb = G ? grad.stride(0) : 0, gk = G ? grad.stride(1) : 0, gs = G ? grad.stride(2) : 0;
  const int code = level_code(x.scalar_type());
  const acc_t h = static_cast<acc_t>(1.0 / static_cast<double>(top));
  const int64_t per_m = 2 + 2 * C + (C == 3 ? 3 : 0);  // logit, total, d_mean[C], d_ls[C], d_coef[3]
  std::atomic<bool> bad_level{false};
  chunked_rows<acc_t>(B, 1, S, ll.mutable_data_ptr<acc_t>(), [&](int64_t b, int64_t, int64_t j0, int64_t j1) {
    std::vector<V_t> scratch(static_cast<size_t>(M * per_m));
    bool bad = false;
    double sum = 0;
    for (int64_t j = j0; j < j1; j += V) {
      const int64_t n = std::min(V, j1 - j);
      V_t xv[3], up[3], down[3];
      for (int64_t c = 0; c < C; ++c) {
        const auto d = data_lanes<acc_t>(x, code, b * xb + c * xc + j * xs, xs, n, top, &bad);
        xv[c] = d.x, up[c] = d.up, down[c] = d.down;
      }
      const scalar_t* base = P + b * pb + j * ps;
      const auto load = [&](int64_t k) { return gather<acc_t>(base + k * pk, ps, n); };
      V_t best(-std::numeric_limits<acc_t>::infinity()), best_logit = best;
      for (int64_t m = 0; m < M; ++m) {
        const MixComponent<V_t> comp = mix_component<V_t>(load, m, M, C, xv, up, down, V_t(h));
        V_t* s = scratch.data() + m * per_m;
        s[0] = load(m);
        s[1] = comp.total;
        for (int64_t c = 0; c < C; ++c) s[2 + c] = comp.d_mean[c], s[2 + C + c] = comp.d_log_scale[c];
        if (C == 3) s[8] = comp.d_coef[0], s[9] = comp.d_coef[1], s[10] = comp.d_coef[2];
        best = at::vec::maximum(best, s[1]);
        best_logit = at::vec::maximum(best_logit, s[0]);
      }
      V_t z(0), z_logit(0);
      for (int64_t m = 0; m < M; ++m) {
        const V_t* s = scratch.data() + m * per_m;
        z = z + fv_exp(s[1] - best);
        z_logit = z_logit + fv_exp(s[0] - best_logit);
      }
      const V_t lse = best + z.log(), lse_logit = best_logit + z_logit.log();
      sum += lane_sum(lse - lse_logit, n);
      if (!G) continue;
      scalar_t* gbase = G + b * gb + j * gs;
      const auto store = [&](int64_t k, const V_t& v) { scatter<acc_t>(gbase + k * gk, gs, n, v); };
      for (int64_t m = 0; m < M; ++m) {
        const V_t* s = scratch.data() + m * per_m;
        const V_t w = fv_exp(s[1] - lse);  // the component's posterior weight
        store(m, w - fv_exp(s[0] - lse_logit));
        for (int64_t c = 0; c < C; ++c) {
          const int64_t blk = mix_block(c, M, C);
          store(blk + m, w * s[2 + c]);
          store(blk + M + m, w * s[2 + C + c]);
          if (C == 3) store(blk + 2 * M + m, w * s[8 + c]);
        }
      }
    }
    if (bad) bad_level = true;
    return sum;
  });
  TORCH_CHECK_VALUE(!bad_level, "x has levels outside [0, ", top, "] (bits = ", __builtin_ctzll(top + 1),
                    "; float x must lie in [-1, 1])");
}

template <typename scalar_t>
void logistic_forward(const at::Tensor& mean, const at::Tensor& log_scale, const at::Tensor& x, int64_t top,
                      at::Tensor& ll, at::Tensor& grad_mean, at::Tensor& grad_ls) {
  using acc_t = at::opmath_type<scalar_t>;
  using V_t = Vec<acc_t>;
  constexpr int64_t V = V_t::size();
  const int64_t B = mean.size(0), C = mean.size(1), S = mean.size(2);
  const scalar_t* mp = mean.const_data_ptr<scalar_t>();
  const scalar_t* lp = log_scale.const_data_ptr<scalar_t>();
  const bool want = grad_mean.defined();
  scalar_t* gm = want ? grad_mean.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gl = want ? grad_ls.mutable_data_ptr<scalar_t>() : nullptr;
  const int code = level_code(x.scalar_type());
  const V_t h(static_cast<acc_t>(1.0 / static_cast<double>(top)));
  std::atomic<bool> bad_level{false};
  chunked_rows<acc_t>(B, C, S, ll.mutable_data_ptr<acc_t>(), [&](int64_t b, int64_t c, int64_t j0, int64_t j1) {
    bool bad = false;
    double sum = 0;
    const int64_t ms = mean.stride(2), ls = log_scale.stride(2);
    for (int64_t j = j0; j < j1; j += V) {
      const int64_t n = std::min(V, j1 - j);
      const auto d = data_lanes<acc_t>(x, code, b * x.stride(0) + c * x.stride(1) + j * x.stride(2), x.stride(2), n,
                                       top, &bad);
      const auto t = logistic_term(d.x, gather<acc_t>(mp + b * mean.stride(0) + c * mean.stride(1) + j * ms, ms, n),
                                   gather<acc_t>(lp + b * log_scale.stride(0) + c * log_scale.stride(1) + j * ls, ls, n),
                                   h, d.up, d.down);
      sum += lane_sum(t.ll, n);
      if (!want) continue;
      const int64_t gms = grad_mean.stride(2), gls = grad_ls.stride(2);
      scatter<acc_t>(gm + b * grad_mean.stride(0) + c * grad_mean.stride(1) + j * gms, gms, n, t.d_mean);
      scatter<acc_t>(gl + b * grad_ls.stride(0) + c * grad_ls.stride(1) + j * gls, gls, n, t.d_log_scale);
    }
    if (bad) bad_level = true;
    return sum;
  });
  TORCH_CHECK_VALUE(!bad_level, "x has levels outside [0, ", top, "] (bits = ", __builtin_ctzll(top + 1),
                    "; float x must lie in [-1, 1])");
}

// ---------------------------------------------------------------- the samplers
// Scalar loops over units (pixels of the mixture, subpixels of one logistic) in tasks of
// kSampleGrain: unit q's uniforms are the flat indices q U .. q U + U - 1 of the call's stream
// (common/philox.h), so the levels do not depend on the thread count, and the CUDA kernels (one
// thread per unit, the same per-unit math) draw the same ones. Levels are (B, C, S) contiguous.
constexpr int64_t kSampleGrain = 1024;

constexpr const char* kNanDraw = "the parameters give a NaN draw (a NaN logit, mean, log-scale or coefficient)";

template <typename scalar_t, typename out_t>
void mix_sample_cpu(const at::Tensor& params, int64_t M, int64_t C, int64_t top, PhiloxState st, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t S = params.size(2), U = M + C;
  const int64_t pb = params.stride(0), pk = params.stride(1), ps = params.stride(2);
  const scalar_t* P = params.const_data_ptr<scalar_t>();
  out_t* O = out.mutable_data_ptr<out_t>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, params.size(0) * S, kSampleGrain, [&](int64_t q0, int64_t q1) {
    PhiloxWords words(st);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / S, s = q % S;
      const scalar_t* base = P + b * pb + s * ps;
      const auto load = [&](int64_t k) { return static_cast<acc_t>(base[k * pk]); };
      const auto uniform = [&](int64_t j) { return philox_open_unit<acc_t>(words(static_cast<uint64_t>(q * U + j))); };
      int64_t v[3];
      mix_sample<acc_t>(load, uniform, M, C, top, v);
      for (int64_t c = 0; c < C; ++c) {
        if (v[c] < 0) bad = true;
        O[(b * C + c) * S + s] = static_cast<out_t>(v[c] < 0 ? 0 : v[c]);
      }
    }
  });
  TORCH_CHECK_VALUE(!bad, "sample_discretized_mix_logistic: ", kNanDraw);
}

template <typename scalar_t, typename out_t>
void logistic_sample_cpu(const at::Tensor& mean, const at::Tensor& log_scale, int64_t top, PhiloxState st,
                         at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = mean.size(1), S = mean.size(2);
  const scalar_t* mp = mean.const_data_ptr<scalar_t>();
  const scalar_t* lp = log_scale.const_data_ptr<scalar_t>();
  const int64_t mb = mean.stride(0), mc = mean.stride(1), ms = mean.stride(2);
  const int64_t lb = log_scale.stride(0), lc = log_scale.stride(1), ls = log_scale.stride(2);
  out_t* O = out.mutable_data_ptr<out_t>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, mean.size(0) * C * S, kSampleGrain, [&](int64_t q0, int64_t q1) {
    PhiloxWords words(st);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / (C * S), c = (q / S) % C, s = q % S;
      const acc_t m = static_cast<acc_t>(mp[b * mb + c * mc + s * ms]);
      const acc_t l = static_cast<acc_t>(lp[b * lb + c * lc + s * ls]);
      const int64_t v = value_level(logistic_draw(m, l, philox_open_unit<acc_t>(words(static_cast<uint64_t>(q)))), top);
      if (v < 0) bad = true;
      O[q] = static_cast<out_t>(v < 0 ? 0 : v);
    }
  });
  TORCH_CHECK_VALUE(!bad, "sample_discretized_logistic: ", kNanDraw);
}

}  // namespace

TensorPair discretized_mix_logistic_log_likelihood_with_grad(const at::Tensor& params, const at::Tensor& x,
                                                   int64_t num_mixtures, int64_t bits, bool compute_grad) {
  check_mix_logistic(params, x, num_mixtures, bits);
  auto ll = at::empty({params.size(0)}, params.options().dtype(acc_dtype(params.scalar_type())));
  at::Tensor grad = compute_grad ? large_output(grad_like(params)) : at::Tensor();
  const int64_t top = (int64_t{1} << bits) - 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params.scalar_type(), "dmol_ll", [&] {
    mix_forward<scalar_t>(params, x, num_mixtures, top, ll, grad);
  });
  return {ll, compute_grad ? grad : at::empty({0}, params.options())};
}

TensorTriple discretized_logistic_log_likelihood_with_grad(const at::Tensor& mean, const at::Tensor& log_scale,
                                                 const at::Tensor& x, int64_t bits, bool compute_grad) {
  check_logistic(mean, log_scale, x, bits);
  auto ll = at::empty({mean.size(0)}, mean.options().dtype(acc_dtype(mean.scalar_type())));
  at::Tensor gm = compute_grad ? large_output(grad_like(mean)) : at::Tensor();
  at::Tensor gl = compute_grad ? large_output(grad_like(log_scale)) : at::Tensor();
  const int64_t top = (int64_t{1} << bits) - 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "dlogistic_ll", [&] {
    logistic_forward<scalar_t>(mean, log_scale, x, top, ll, gm, gl);
  });
  if (!compute_grad) return {ll, at::empty({0}, mean.options()), at::empty({0}, mean.options())};
  return {ll, gm, gl};
}

at::Tensor sample_discretized_mix_logistic(const at::Tensor& params, int64_t num_mixtures, int64_t bits,
                                           std::optional<at::Generator> generator,
                                           const std::optional<at::Tensor>& rng_state) {
  const int64_t C = check_mix_sample(params, num_mixtures, bits, rng_state);
  const int64_t top = (int64_t{1} << bits) - 1;
  auto out = at::empty({params.size(0), C, params.size(2)}, params.options().dtype(level_dtype(top + 1)));
  const PhiloxState st = draw::read_state(draw::sampling_state(params, generator, rng_state));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params.scalar_type(), "dmol_sample", [&] {
    dispatch_level_type(out, [&](auto tag) {
      mix_sample_cpu<scalar_t, decltype(tag)>(params, num_mixtures, C, top, st, out);
    });
  });
  return out;
}

at::Tensor sample_discretized_logistic(const at::Tensor& mean, const at::Tensor& log_scale, int64_t bits,
                                       std::optional<at::Generator> generator,
                                       const std::optional<at::Tensor>& rng_state) {
  check_logistic_sample(mean, log_scale, bits, rng_state);
  const int64_t top = (int64_t{1} << bits) - 1;
  auto out = at::empty(mean.sizes(), mean.options().dtype(level_dtype(top + 1)));
  const PhiloxState st = draw::read_state(draw::sampling_state(mean, generator, rng_state));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "dlogistic_sample", [&] {
    dispatch_level_type(out, [&](auto tag) { logistic_sample_cpu<scalar_t, decltype(tag)>(mean, log_scale, top, st, out); });
  });
  return out;
}

}  // namespace cpu
}  // namespace fastvae
