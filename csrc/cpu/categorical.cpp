// The categorical log-likelihood of integer levels under per-subpixel K-way softmaxes, summed per
// image, with d ll / d logits = onehot(x) - softmax written in the same pass (csrc/common/categorical.h).
//
// Work is cut into tiles of W subpixels of one image (W = two vectors of lanes). A tile's K x W
// logits are gathered, widened to acc_t, into a small buffer laid out class-major (whatever the
// logits' strides: class-innermost channels-last or spatial-innermost NCHW), so that the max, the
// exps (one per logit) and the softmax run on whole vectors of subpixels, the buffer staying in
// the core's cache: the logits are read from memory once and the log-softmax is never stored.
// Tile boundaries depend only on the shape and each image sums its tiles in order: deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "cpu/vec_math.h"
#include "common/categorical.h"
#include "cpu/outputs.h"
#include "ops.h"

namespace fastvae {
namespace cpu {

namespace {

struct Strides {
  int64_t b, k, s;
  explicit Strides(const at::Tensor& t) : b(t.stride(0)), k(t.stride(1)), s(t.stride(2)) {}
};

// Copies n <= W subpixels x K classes between a strided tensor and the class-major buffer, in the
// order that walks the tensor's smaller stride innermost. to_buf: tensor -> buffer, else back.
template <int64_t W, typename acc_t, typename P>
void move_tile(P* t, const Strides& st, int64_t K, int64_t n, acc_t* buf, bool to_buf) {
  constexpr int64_t V = Vec<acc_t>::size();
  if (st.s == 1 && n == W) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < W; i += V) {
        if constexpr (std::is_const_v<P>) {
          load_widened<acc_t>(t + k * st.k + i).store(buf + k * W + i);
        } else {
          store_narrowed<acc_t>(t + k * st.k + i, Vec<acc_t>::loadu(buf + k * W + i));
        }
      }
    return;
  }
  auto one = [&](int64_t k, int64_t i) {
    if constexpr (std::is_const_v<P>) {
      buf[k * W + i] = static_cast<acc_t>(t[k * st.k + i * st.s]);
    } else {
      t[k * st.k + i * st.s] = static_cast<std::remove_const_t<P>>(buf[k * W + i]);
    }
  };
  if (std::abs(st.k) <= std::abs(st.s)) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < K; ++k) one(k, i);
  } else {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < n; ++i) one(k, i);
  }
}

template <typename scalar_t, typename x_t>
struct CategoricalTiles {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int64_t V = Vec<acc_t>::size();
  static constexpr int64_t W = 2 * V;
  const scalar_t* l;
  Strides ls;
  scalar_t* g;  // null: no gradient asked for
  Strides gs;
  const x_t* x;
  int64_t K, S;

  // The log-likelihood summed over subpixels s0 .. s0 + n of image b; buf holds K * W acc_t.
  double run(int64_t b, int64_t s0, int64_t n, acc_t* buf) const {
    const scalar_t* lb = l + b * ls.b + s0 * ls.s;
    move_tile<W>(lb, ls, K, n, buf, true);
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
      const int64_t xi = static_cast<int64_t>(xb[i]);
      const acc_t lx = static_cast<acc_t>(lb[xi * ls.k + i * ls.s]);
      total += static_cast<double>(lx - (mx[i] + std::log(sum[i])));
    }
    if (!g) return total;
    const Vec<acc_t> i0 = Vec<acc_t>(acc_t(-1)) / s0v, i1 = Vec<acc_t>(acc_t(-1)) / s1v;
    for (int64_t k = 0; k < K; ++k) {
      (Vec<acc_t>::loadu(buf + k * W) * i0).store(buf + k * W);
      (Vec<acc_t>::loadu(buf + k * W + V) * i1).store(buf + k * W + V);
    }
    for (int64_t i = 0; i < n; ++i) buf[static_cast<int64_t>(xb[i]) * W + i] += acc_t(1);
    move_tile<W>(g + b * gs.b + s0 * gs.s, gs, K, n, buf, false);
    return total;
  }
};

// CPU only (the CUDA kernels turn such a subpixel's result into NaN, not to sync): every level a class.
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
void categorical_forward(const at::Tensor& logits, const at::Tensor& x, at::Tensor& ll, at::Tensor& grad) {
  using Tiles = CategoricalTiles<scalar_t, x_t>;
  using acc_t = typename Tiles::acc_t;
  check_levels<x_t>(x, logits.size(1));
  const int64_t B = logits.size(0), K = logits.size(1), S = logits.size(2);
  const Tiles t{logits.const_data_ptr<scalar_t>(), Strides(logits),
                grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr,
                grad.defined() ? Strides(grad) : Strides(logits), x.const_data_ptr<x_t>(), K, S};
  const int64_t per_row = (S + Tiles::W - 1) / Tiles::W, tasks = B * per_row;
  std::vector<double> partial(static_cast<size_t>(tasks));
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(K * Tiles::W, 1));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(static_cast<size_t>(K * Tiles::W));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / per_row, s0 = (task % per_row) * Tiles::W;
      partial[task] = t.run(b, s0, std::min(Tiles::W, S - s0), buf.data());
    }
  });
  acc_t* out = ll.mutable_data_ptr<acc_t>();
  for (int64_t b = 0; b < B; ++b) {
    double s = 0;
    for (int64_t c = 0; c < per_row; ++c) s += partial[b * per_row + c];
    out[b] = static_cast<acc_t>(s);
  }
}

}  // namespace

TensorPair categorical_log_likelihood(const at::Tensor& logits, const at::Tensor& x, bool compute_grad) {
  check_categorical(logits, x);
  auto ll = at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
  at::Tensor grad = compute_grad ? large_output(at::empty_like(logits)) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "categorical_ll", [&] {
    if (x.scalar_type() == at::kByte) {
      categorical_forward<scalar_t, uint8_t>(logits, x, ll, grad);
    } else {
      categorical_forward<scalar_t, int64_t>(logits, x, ll, grad);
    }
  });
  return {ll, compute_grad ? grad : at::empty({0}, logits.options())};
}

}  // namespace cpu
}  // namespace fastvae
