// The categorical log-likelihood of integer levels under per-subpixel K-way softmaxes, summed per
// image, with d ll / d logits = onehot(x) - softmax written in the same pass (csrc/common/categorical.h).
//
// logits (B, K, C, P) of any strides (P: the spatial dims, merged); subpixel s of an image is
// channel s / P, position s % P. Two walks, both reading the logits from memory once and never
// storing the log-softmax:
// * class-contiguous logits (a channels-last decoder output with the classes innermost): each
//   subpixel's K logits in vectors along the classes (max, exps and their sum, softmax);
// * any other strides (e.g. NCHW, positions innermost): tiles of W subpixels of one image
//   (W = two vectors of lanes) gathered, widened to acc_t, into a class-major buffer that stays
//   in the core's cache, so that the max, the exps (one per logit) and the softmax run on whole
//   vectors of subpixels.
// Task boundaries (W subpixels) depend only on the shape and each image sums its tasks in order:
// deterministic whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "cpu/vec_math.h"
#include "common/categorical.h"
#include "common/philox.h"
#include "cpu/normals.h"
#include "cpu/outputs.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

namespace {

// Strides of a (B, K, C, P) tensor, and the offset of subpixel s within an image.
struct Strides {
  int64_t b, k, c, p, positions;
  explicit Strides(const at::Tensor& t)
      : b(t.stride(0)), k(t.stride(1)), c(t.stride(2)), p(t.stride(3)), positions(t.size(3)) {}
  int64_t at(int64_t s) const { return (s / positions) * c + (s % positions) * p; }
};

// Copies n <= W subpixels (s0 ..) x K classes of image base t between the tensor and the
// class-major buffer buf[k * W + i], walking the smaller stride innermost. to_buf: into buf.
template <int64_t W, typename acc_t, typename T>
void move_tile(T* t, const Strides& st, int64_t K, int64_t s0, int64_t n, acc_t* buf) {
  constexpr int64_t V = Vec<acc_t>::size();
  constexpr bool to_buf = std::is_const_v<T>;
  int64_t off[W];
  for (int64_t i = 0; i < n; ++i) off[i] = st.at(s0 + i);
  bool row = n == W;  // W consecutive elements: whole vectors
  for (int64_t i = 1; row && i < n; ++i) row = off[i] == off[0] + i;
  if (row) {
    T* first = t + off[0];
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < W; i += V) {
        if constexpr (to_buf) {
          load_widened<acc_t>(first + k * st.k + i).store(buf + k * W + i);
        } else {
          store_narrowed<acc_t>(first + k * st.k + i, Vec<acc_t>::loadu(buf + k * W + i));
        }
      }
    return;
  }
  auto one = [&](int64_t k, int64_t i) {
    if constexpr (to_buf) {
      buf[k * W + i] = static_cast<acc_t>(t[k * st.k + off[i]]);
    } else {
      t[k * st.k + off[i]] = static_cast<std::remove_const_t<T>>(buf[k * W + i]);
    }
  };
  if (std::abs(st.k) <= std::abs(st.p)) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < K; ++k) one(k, i);
  } else {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < n; ++i) one(k, i);
  }
}

template <typename scalar_t, typename x_t>
struct Categorical {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int64_t V = Vec<acc_t>::size();
  static constexpr int64_t W = 2 * V;
  const scalar_t* l;
  Strides ls;
  scalar_t* g;  // null: no gradient asked for
  Strides gs;
  const x_t* x;
  int64_t K, S;
  acc_t scale;  // the gradient written is scale * (onehot(x) - softmax)

  bool by_class() const { return ls.k == 1 && K >= V; }

  // The log-likelihood summed over subpixels s0 .. s0 + n of image b; buf holds K * W acc_t.
  double run(int64_t b, int64_t s0, int64_t n, acc_t* buf) const {
    if (!by_class()) return tile(b, s0, n, buf);
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += subpixel(b, s0 + i, buf);
    return total;
  }

  // One subpixel of class-contiguous logits; buf keeps its exps for the gradient.
  double subpixel(int64_t b, int64_t s, acc_t* buf) const {
    const scalar_t* p = l + b * ls.b + ls.at(s);
    const int64_t kv = K - K % V;
    Vec<acc_t> mv = load_widened<acc_t>(p);
    for (int64_t k = V; k < kv; k += V) mv = at::vec::maximum(mv, load_widened<acc_t>(p + k));
    alignas(64) acc_t lanes[V];
    mv.store(lanes);
    acc_t m = lanes[0];
    auto take_max = [&](acc_t v) { m = (v > m || v != v) ? v : m; };  // NaN wins
    for (int64_t v = 1; v < V; ++v) take_max(lanes[v]);
    for (int64_t k = kv; k < K; ++k) take_max(static_cast<acc_t>(p[k]));
    const Vec<acc_t> mb(m);
    Vec<acc_t> sv(acc_t(0));
    for (int64_t k = 0; k < kv; k += V) {
      const Vec<acc_t> e = fv_exp(load_widened<acc_t>(p + k) - mb);
      if (g) e.store(buf + k);
      sv = sv + e;
    }
    sv.store(lanes);
    acc_t sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += lanes[v];
    for (int64_t k = kv; k < K; ++k) {
      buf[k] = std::exp(static_cast<acc_t>(p[k]) - m);
      sum += buf[k];
    }
    const int64_t xi = static_cast<int64_t>(x[b * S + s]);
    const double ll = static_cast<double>(static_cast<acc_t>(p[xi]) - (m + std::log(sum)));
    if (!g) return ll;
    const acc_t inv = -scale / sum;
    const Vec<acc_t> iv(inv);
    for (int64_t k = 0; k < kv; k += V) (Vec<acc_t>::loadu(buf + k) * iv).store(buf + k);
    for (int64_t k = kv; k < K; ++k) buf[k] *= inv;
    buf[xi] += scale;
    scalar_t* gp = g + b * gs.b + gs.at(s);
    if (gs.k == 1) {
      for (int64_t k = 0; k < kv; k += V) store_narrowed<acc_t>(gp + k, Vec<acc_t>::loadu(buf + k));
      for (int64_t k = kv; k < K; ++k) gp[k] = static_cast<scalar_t>(buf[k]);
    } else {
      for (int64_t k = 0; k < K; ++k) gp[k * gs.k] = static_cast<scalar_t>(buf[k]);
    }
    return ll;
  }

  // Subpixels s0 .. s0 + n of image b as a class-major tile of W lanes (lanes past n zero).
  double tile(int64_t b, int64_t s0, int64_t n, acc_t* buf) const {
    const scalar_t* lb = l + b * ls.b;
    move_tile<W>(lb, ls, K, s0, n, buf);
    if (n < W)
      for (int64_t k = 0; k < K; ++k) std::fill(buf + k * W + n, buf + (k + 1) * W, acc_t(0));
    Vec<acc_t> m0 = Vec<acc_t>::loadu(buf), m1 = Vec<acc_t>::loadu(buf + V);
    for (int64_t k = 1; k < K; ++k) {
      m0 = at::vec::maximum(m0, Vec<acc_t>::loadu(buf + k * W));
      m1 = at::vec::maximum(m1, Vec<acc_t>::loadu(buf + k * W + V));
    }
    Vec<acc_t> s0v(acc_t(0)), s1v(acc_t(0));
    for (int64_t k = 0; k < K; ++k) {
      const Vec<acc_t> e0 = fv_exp(Vec<acc_t>::loadu(buf + k * W) - m0);
      const Vec<acc_t> e1 = fv_exp(Vec<acc_t>::loadu(buf + k * W + V) - m1);
      e0.store(buf + k * W);
      e1.store(buf + k * W + V);
      s0v = s0v + e0;
      s1v = s1v + e1;
    }
    alignas(64) acc_t mx[W], sum[W];
    m0.store(mx);
    m1.store(mx + V);
    s0v.store(sum);
    s1v.store(sum + V);
    double total = 0;
    const x_t* xb = x + b * S + s0;
    for (int64_t i = 0; i < n; ++i) {
      const acc_t lx = static_cast<acc_t>(lb[static_cast<int64_t>(xb[i]) * ls.k + ls.at(s0 + i)]);
      total += static_cast<double>(lx - (mx[i] + std::log(sum[i])));
    }
    if (!g) return total;
    const Vec<acc_t> i0 = Vec<acc_t>(-scale) / s0v, i1 = Vec<acc_t>(-scale) / s1v;
    for (int64_t k = 0; k < K; ++k) {
      (Vec<acc_t>::loadu(buf + k * W) * i0).store(buf + k * W);
      (Vec<acc_t>::loadu(buf + k * W + V) * i1).store(buf + k * W + V);
    }
    for (int64_t i = 0; i < n; ++i) buf[static_cast<int64_t>(xb[i]) * W + i] += scale;
    move_tile<W>(g + b * gs.b, gs, K, s0, n, buf);
    return total;
  }
};

// CPU only (the CUDA kernels give such a subpixel NaN rather than sync): every level a class.
template <typename x_t>
void check_levels(const at::Tensor& x, int64_t classes) {
  if (std::is_same_v<x_t, uint8_t> && classes >= 256) return;
  const x_t* p = x.const_data_ptr<x_t>();
  for (int64_t i = 0, n = x.numel(); i < n; ++i)
    TORCH_CHECK_VALUE(level_ok(p[i], classes), "fastvae: x holds level ", static_cast<int64_t>(p[i]),
                      " (flat index ", i, "), outside 0 .. ", classes - 1, " (logits have ", classes,
                      " classes)");
}

template <typename scalar_t, typename x_t>
void categorical_forward(const at::Tensor& logits, const at::Tensor& x, at::Tensor& ll, at::Tensor& grad,
                         double grad_scale) {
  using Op = Categorical<scalar_t, x_t>;
  using acc_t = typename Op::acc_t;
  check_levels<x_t>(x, logits.size(1));
  const int64_t B = logits.size(0), K = logits.size(1), S = x.size(1);
  const Op op{logits.const_data_ptr<scalar_t>(), Strides(logits),
              grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr,
              grad.defined() ? Strides(grad) : Strides(logits), x.const_data_ptr<x_t>(), K, S,
              static_cast<acc_t>(grad_scale)};
  const int64_t per_row = (S + Op::W - 1) / Op::W, tasks = B * per_row;
  std::vector<double> partial(static_cast<size_t>(tasks));
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(K * Op::W, 1));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(static_cast<size_t>(K * Op::W));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / per_row, s0 = (task % per_row) * Op::W;
      partial[task] = op.run(b, s0, std::min(Op::W, S - s0), buf.data());
    }
  });
  acc_t* out = ll.mutable_data_ptr<acc_t>();
  for (int64_t b = 0; b < B; ++b) {
    double s = 0;
    for (int64_t c = 0; c < per_row; ++c) s += partial[b * per_row + c];
    out[b] = static_cast<acc_t>(s);
  }
}

// The sampler, one subpixel at a time (the likelihood's twin): subpixel q = b C P + s (the
// levels' flat index) draws by the inverse CDF (common/categorical.h) at uniform q of the call's
// stream, as the CUDA kernel does; tasks of kSampleGrain subpixels, so the levels do not depend
// on the thread count.
template <typename scalar_t, typename out_t>
void categorical_sample_cpu(const at::Tensor& logits, PhiloxState st, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const Strides str(logits);
  const int64_t K = logits.size(1), S = out.size(1);
  const scalar_t* L = logits.const_data_ptr<scalar_t>();
  out_t* O = out.mutable_data_ptr<out_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / K);
  std::atomic<bool> bad{false};
  at::parallel_for(0, out.numel(), grain, [&](int64_t q0, int64_t q1) {
    PhiloxWords words(st);
    for (int64_t q = q0; q < q1; ++q) {
      const scalar_t* l = L + (q / S) * str.b + str.at(q % S);
      const auto load = [&](int64_t k) { return static_cast<acc_t>(l[k * str.k]); };
      const int64_t v = categorical_draw<acc_t>(load, K, philox_open_unit<acc_t>(words(static_cast<uint64_t>(q))));
      if (v < 0) bad = true;
      O[q] = static_cast<out_t>(v < 0 ? 0 : v);
    }
  });
  TORCH_CHECK_VALUE(!bad, "sample_categorical: the logits of a subpixel are not a distribution (a NaN logit, "
                    "every logit -inf, or two +inf)");
}

}  // namespace

TensorPair categorical_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  return categorical_log_likelihood_scaled(logits, x, compute_grad, 1.0);
}

TensorPair categorical_log_likelihood_scaled(const at::Tensor& logits, const at::Tensor& x, bool compute_grad,
                                             double grad_scale) {
  check_categorical(logits, x);
  auto ll = at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
  at::Tensor grad;
  if (compute_grad) {
    // Strided like the logits (e.g. channels-last); large_output's huge-page hint for any dense
    // layout, through a flat view of the same memory.
    grad = at::empty_like(logits);
    if (grad.is_non_overlapping_and_dense()) large_output(grad.as_strided({grad.numel()}, {1}));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "categorical_ll", [&] {
    if (x.scalar_type() == at::kByte) {
      categorical_forward<scalar_t, uint8_t>(logits, x, ll, grad, grad_scale);
    } else {
      categorical_forward<scalar_t, int64_t>(logits, x, ll, grad, grad_scale);
    }
  });
  return {ll, compute_grad ? grad : at::empty({0}, logits.options())};
}

at::Tensor sample_categorical(const at::Tensor& logits, std::optional<at::Generator> generator,
                              const std::optional<at::Tensor>& rng_state) {
  check_categorical_sample(logits, rng_state);
  auto out = at::empty({logits.size(0), logits.size(2) * logits.size(3)},
                       logits.options().dtype(level_dtype(logits.size(1))));
  const PhiloxState st = draw::read_state(draw::sampling_state(logits, generator, rng_state));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "categorical_sample", [&] {
    dispatch_level_type(out, [&](auto tag) { categorical_sample_cpu<scalar_t, decltype(tag)>(logits, st, out); });
  });
  return out;
}

}  // namespace cpu
}  // namespace fastvae
