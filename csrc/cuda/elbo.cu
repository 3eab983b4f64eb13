// The whole negative ELBO as one op, mirroring csrc/cpu/elbo.cpp. Kernels:
//   1. row pass (launch.cuh's row_sums): each row's log-likelihood, and in the same pass the
//      gradients of recon (and of a per-element variance) times -row_scale;
//   2. a variance shared by rows: its gradient summed over rows by repeat_sums (fixed order);
//   3. a KL from mu and logvar: its row sums and its gradients in one coalesced, packed pass of
//      row_sums (cuda/kl_rows.cuh, the KL op's own row functor);
//   4. finish: per row beta * kl - ll; the batch sum in double, each thread's rows then a fixed
//      tree per block; with more than one finishing block, one block adds their partial sums in
//      order.
// No float atomics anywhere, and no summation order that depends on the device (launch.cuh): the
// loss and every gradient are bit-for-bit reproducible.
// elbo_rescale(_) is one grid-stride kernel over every gradient tensor at once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/checks.h"
#include "common/elbo_args.h"
#include "cuda/kl_rows.cuh"
#include "cuda/launch.cuh"
#include "ops.h"

namespace fastvae {
namespace cuda {

using namespace cuda_detail;

namespace {

// Likelihood terms of rows of recon against x (row r reads x row r % x_rows) and, for the
// Gaussian, a variance from a tensor (row r % lv_rows) or the constant lv_const.
template <typename scalar_t, typename x_t, bool kGaussian, bool kLvTensor>
struct ElboRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kPack = pack_width<scalar_t>();
  const scalar_t* recon;
  const x_t* x;
  const scalar_t* lv;     // kLvTensor only
  scalar_t* grad_recon;   // null: not asked for
  scalar_t* grad_lv;      // per-element variance only; null otherwise
  int64_t cols, x_rows, lv_rows;
  acc_t scale, lv_const, h_const;  // h_const = e^(-lv_const/2)
  acc_t f;                         // row_scale: each term enters the row sum times it

  bool packs_fit() const { return cuda_detail::packs_fit<kPack>(cols, recon, x, lv, grad_recon, grad_lv); }

  template <int V>
  __device__ acc_t sum(int64_t r, int64_t j) const {
    const auto m = load_pack<V>(recon + r * cols + j);
    const auto xv = load_pack<V>(x + (r % x_rows) * cols + j);
    Pack<scalar_t, V> lvv;
    if constexpr (kLvTensor) lvv = load_pack<V>(lv + (r % lv_rows) * cols + j);
    Pack<scalar_t, V> g, glv;
    acc_t s = 0;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const acc_t mv = static_cast<acc_t>(m.v[v]);
      const acc_t xa = static_cast<acc_t>(xv.v[v]);
      if constexpr (!kGaussian) {
        acc_t dl;
        s += bernoulli_ll_with_grad(mv, xa, &dl) * f;
        g.v[v] = static_cast<scalar_t>(dl * scale);
      } else {
        acc_t l = lv_const, h = h_const;
        if constexpr (kLvTensor) {
          l = static_cast<acc_t>(lvv.v[v]);
          h = inv_std(l);
        }
        s += gaussian_ll(xa, mv, l, h, f);
        g.v[v] = static_cast<scalar_t>(gaussian_ll_grad_mean(xa, mv, h, scale));
        glv.v[v] = static_cast<scalar_t>(gaussian_ll_grad_logvar(xa, mv, h, scale));
      }
    }
    const int64_t i = r * cols + j;
    if (grad_recon) store_pack<V>(grad_recon + i, g);
    if constexpr (kGaussian && kLvTensor) {
      if (grad_lv) store_pack<V>(grad_lv + i, glv);
    }
    return s;
  }
};

template <typename scalar_t, typename x_t, bool kGaussian, bool kLvTensor>
void launch_rows(const ElboArgs& a, const at::Tensor& recon, const at::Tensor& x, const at::Tensor& lv,
                 at::Tensor& ll, scalar_t* grad_recon, scalar_t* grad_lv) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t lv_const = static_cast<acc_t>(a.lv_value);
  const ElboRows<scalar_t, x_t, kGaussian, kLvTensor> rows{
      recon.const_data_ptr<scalar_t>(), x.const_data_ptr<x_t>(),
      kLvTensor ? lv.const_data_ptr<scalar_t>() : nullptr, grad_recon, grad_lv,
      a.cols, a.x_rows, kLvTensor ? a.lv_rows : 1,
      static_cast<acc_t>(-a.row_scale), lv_const, inv_std(lv_const), static_cast<acc_t>(a.row_scale)};
  row_sums<acc_t>(a.rows, a.cols, ll.mutable_data_ptr<acc_t>(), ll.options(), rows);
}

template <typename acc_t>
struct FinishArgs {
  int64_t rows;
  const acc_t* ll;
  const acc_t* kl;
  acc_t* grad_kl;        // null: not asked for (or the KL came from mu and logvar)
  acc_t beta, kl_scale;  // kl_scale = beta * row_scale, d loss / d kl_r
  acc_t kl_in;           // row_scale for a KL passed in; 1 for the KL rows (scaled as they are summed)
  acc_t* per_row;        // reduction "none": the loss per row (may alias ll); else null
  double* partial;       // one sum per block when the grid has several
  acc_t* loss;           // the reduced loss, written by a grid of one block
};

// Each thread takes rows r = tid, tid + threads, ... in order, reading two values a row (coalesced);
// per_row is the same for every thread, so either all return before block_sum's barrier or none does.
template <typename acc_t>
__global__ void elbo_finish_kernel(FinishArgs<acc_t> a) {
  double s = 0;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < a.rows; r += int64_t(gridDim.x) * blockDim.x) {
    if (a.grad_kl) a.grad_kl[r] = a.kl_scale;
    const acc_t loss_r = a.beta * (a.kl[r] * a.kl_in) - a.ll[r];
    if (a.per_row)
      a.per_row[r] = loss_r;
    else
      s += static_cast<double>(loss_r);
  }
  if (a.per_row) return;
  s = block_sum(s);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1)
      *a.loss = static_cast<acc_t>(s);  // the terms carry row_scale already
    else
      a.partial[blockIdx.x] = s;
  }
}

template <typename acc_t>
__global__ void elbo_sum_partials_kernel(int64_t n, const double* partial, acc_t* loss) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *loss = static_cast<acc_t>(s);
}

// Finishing blocks: a fixed function of the row count (not of the device), so that the
// summation order, and the loss's last bits, are the same on every GPU.
constexpr int64_t kMaxFinishBlocks = 64;

}  // namespace

ElboOutputs elbo_loss(const at::Tensor& recon, const at::Tensor& x, const std::optional<at::Tensor>& kl,
                      const std::optional<at::Tensor>& mu, const std::optional<at::Tensor>& logvar,
                      const std::optional<at::Tensor>& obs_logvar, double obs_logvar_value,
                      c10::string_view likelihood, double beta, c10::string_view reduction,
                      std::array<bool, 3> grad_mask) {
  const ElboArgs a = check_elbo_args(recon, x, kl, mu, logvar, obs_logvar, obs_logvar_value, likelihood, beta,
                                     reduction, grad_mask);
  const c10::cuda::CUDAGuard guard(recon.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool none = a.reduction == ElboReduction::kNone;
  ElboBuffers out = elbo_buffers(a, recon, kl, mu, logvar, obs_logvar);
  at::Tensor &loss = out.loss, &ll = out.ll, &grad_recon = out.grad_recon, &grad_kl = out.grad_kl,
             &grad_mu = out.grad_mu, &grad_logvar = out.grad_logvar, &grad_lv = out.grad_lv;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, recon.scalar_type(), "elbo_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* gr = a.grad_recon ? grad_recon.mutable_data_ptr<scalar_t>() : nullptr;
    const at::Tensor no_lv;
    if (!a.gaussian) {
      switch (x.scalar_type()) {
        case at::kByte: launch_rows<scalar_t, uint8_t, false, false>(a, recon, x, no_lv, ll, gr, nullptr); break;
        case at::kBool: launch_rows<scalar_t, bool, false, false>(a, recon, x, no_lv, ll, gr, nullptr); break;
        default: launch_rows<scalar_t, scalar_t, false, false>(a, recon, x, no_lv, ll, gr, nullptr);
      }
    } else if (a.lv_tensor) {
      scalar_t* glv = a.grad_lv && !a.lv_shared() ? grad_lv.mutable_data_ptr<scalar_t>() : nullptr;
      launch_rows<scalar_t, scalar_t, true, true>(a, recon, x, *obs_logvar, ll, gr, glv);
      if (a.grad_lv && a.lv_shared()) {
        // -row_scale * sum over the rows that read each variance, in row order.
        const int64_t cols = a.cols, x_rows = a.x_rows, lv_rows = a.lv_rows;
        const scalar_t* m = recon.const_data_ptr<scalar_t>();
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* lvp = obs_logvar->const_data_ptr<scalar_t>();
        const acc_t scale = static_cast<acc_t>(-a.row_scale);
        const auto lv_acc_opts = obs_logvar->options().dtype(acc_dtype(obs_logvar->scalar_type()));
        at::Tensor acc = std::is_same_v<scalar_t, acc_t> ? grad_lv : at::empty(obs_logvar->sizes(), lv_acc_opts);
        repeat_sums<acc_t>(a.rows, lv_rows, cols, acc.mutable_data_ptr<acc_t>(), lv_acc_opts,
                           [=] __device__(int64_t r, int64_t j) {
                             const acc_t h = inv_std(static_cast<acc_t>(lvp[(r % lv_rows) * cols + j]));
                             return gaussian_ll_grad_logvar(static_cast<acc_t>(xp[(r % x_rows) * cols + j]),
                                                            static_cast<acc_t>(m[r * cols + j]), h, scale);
                           });
        if (!std::is_same_v<scalar_t, acc_t>) grad_lv.copy_(acc);
      }
    } else {
      launch_rows<scalar_t, scalar_t, true, false>(a, recon, x, no_lv, ll, gr, nullptr);
    }

    // The KL from mu and logvar: row sums and gradients (times beta * row_scale) in one pass.
    at::Tensor kl_rows;
    if (!a.has_kl) {
      kl_rows = at::empty({a.rows}, ll.options());
      KlRows<scalar_t> k{mu->const_data_ptr<scalar_t>(), logvar->const_data_ptr<scalar_t>(), a.latent};
      if (a.grad_kl) {
        k.grad_mu = grad_mu.mutable_data_ptr<scalar_t>();
        k.grad_logvar = grad_logvar.mutable_data_ptr<scalar_t>();
        k.scale = static_cast<acc_t>(a.beta * a.row_scale);
      }
      k.sum_scale = static_cast<acc_t>(a.row_scale);
      row_sums<acc_t>(a.rows, a.latent, kl_rows.mutable_data_ptr<acc_t>(), ll.options(), k);
    }

    const int64_t blocks = std::min<int64_t>((a.rows + kThreads - 1) / kThreads, kMaxFinishBlocks);
    at::Tensor partial = !none && blocks > 1 ? at::empty({blocks}, recon.options().dtype(at::kDouble)) : at::Tensor();
    FinishArgs<acc_t> f;
    f.rows = a.rows;
    f.ll = ll.const_data_ptr<acc_t>();
    f.kl = a.has_kl ? kl->const_data_ptr<acc_t>() : kl_rows.const_data_ptr<acc_t>();
    f.grad_kl = a.grad_kl && a.has_kl ? grad_kl.mutable_data_ptr<acc_t>() : nullptr;
    f.beta = static_cast<acc_t>(a.beta);
    f.kl_scale = static_cast<acc_t>(a.beta * a.row_scale);
    f.kl_in = static_cast<acc_t>(a.has_kl ? a.row_scale : 1.0);
    f.per_row = none ? loss.mutable_data_ptr<acc_t>() : nullptr;
    f.partial = partial.defined() ? partial.mutable_data_ptr<double>() : nullptr;
    f.loss = none ? nullptr : loss.mutable_data_ptr<acc_t>();
    FASTVAE_LAUNCH(blocks, kThreads, 0, stream, elbo_finish_kernel<acc_t>)(f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (partial.defined()) {
      FASTVAE_LAUNCH(1, kThreads, 0, stream, elbo_sum_partials_kernel<acc_t>)(
          blocks, partial.const_data_ptr<double>(), loss.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out.outputs();
}

// ---------------------------------------------------------------- rescale
namespace {

constexpr int kMaxSlots = 8;
enum SlotType : int { kSlotFloat, kSlotDouble, kSlotHalf, kSlotBFloat16 };

// Up to kMaxSlots tensors seen as one index space: tensor k holds [begin[k], begin[k + 1]).
struct RescaleSlots {
  const void* in[kMaxSlots];
  void* out[kMaxSlots];
  int64_t begin[kMaxSlots + 1];
  int64_t inner[kMaxSlots];  // elements per row (a per-row grad scales row i / inner)
  int type[kMaxSlots];
  int n;
};

template <typename T, typename g_t>
__device__ __forceinline__ void scale_element(const void* in, void* out, int64_t i, g_t s) {
  using acc_t = at::opmath_type<T>;
  static_cast<T*>(out)[i] =
      static_cast<T>(static_cast<acc_t>(static_cast<const T*>(in)[i]) * static_cast<acc_t>(static_cast<float>(s)));
}

template <typename T>
__device__ __forceinline__ void scale_element(const void* in, void* out, int64_t i, double s) {
  using acc_t = at::opmath_type<T>;
  static_cast<T*>(out)[i] = static_cast<T>(static_cast<acc_t>(static_cast<const T*>(in)[i]) * static_cast<acc_t>(s));
}

// out = in * grad (one value, or grad[row * stride] per row). In place, a factor of exactly 1
// moves nothing: with one incoming value of 1 (loss.backward()) every thread returns at once.
template <typename g_t>
__global__ void elbo_rescale_kernel(const g_t* grad, int64_t g_n, int64_t g_stride, RescaleSlots a, bool in_place) {
  if (in_place && g_n == 1 && grad[0] == g_t(1)) return;
  const int64_t total = a.begin[a.n];
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int k = 0;
    while (idx >= a.begin[k + 1]) ++k;
    const int64_t i = idx - a.begin[k];
    const g_t s = g_n == 1 ? grad[0] : grad[(i / a.inner[k]) * g_stride];
    if (in_place && s == g_t(1)) continue;
    switch (a.type[k]) {
      case kSlotFloat: scale_element<float>(a.in[k], a.out[k], i, s); break;
      case kSlotDouble: scale_element<double>(a.in[k], a.out[k], i, s); break;
      case kSlotHalf: scale_element<at::Half>(a.in[k], a.out[k], i, s); break;
      default: scale_element<at::BFloat16>(a.in[k], a.out[k], i, s);
    }
  }
}

int slot_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kSlotFloat;
    case at::kDouble: return kSlotDouble;
    case at::kHalf: return kSlotHalf;
    default: return kSlotBFloat16;
  }
}

void rescale(const at::Tensor& grad, at::TensorList in, const std::vector<at::Tensor>& out, bool in_place) {
  const c10::cuda::CUDAGuard guard(grad.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t g_n = grad.numel(), g_stride = grad.dim() == 1 ? grad.stride(0) : 0;
  for (size_t first = 0; first < in.size(); first += kMaxSlots) {
    RescaleSlots a{};
    a.n = 0;
    a.begin[0] = 0;
    for (size_t t = first; t < in.size() && t < first + kMaxSlots; ++t) {
      if (in[t].numel() == 0) continue;
      const int k = a.n++;
      a.in[k] = in[t].const_data_ptr();
      a.out[k] = out[t].mutable_data_ptr();
      a.inner[k] = g_n == 1 ? 1 : in[t].numel() / in[t].size(0);
      a.type[k] = slot_type(in[t].scalar_type());
      a.begin[k + 1] = a.begin[k] + in[t].numel();
    }
    if (a.n == 0) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "elbo_rescale_cuda", [&] {
      FASTVAE_LAUNCH(grid_for(a.begin[a.n]), kThreads, 0, stream, elbo_rescale_kernel<scalar_t>)(
          grad.const_data_ptr<scalar_t>(), g_n, g_stride, a, in_place);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

}  // namespace

void elbo_rescale_(const at::Tensor& grad, at::TensorList grads) {
  check_elbo_rescale_args(grad, grads);
  rescale(grad, grads, grads.vec(), /*in_place=*/true);
}

std::vector<at::Tensor> elbo_rescale(const at::Tensor& grad, at::TensorList grads) {
  check_elbo_rescale_args(grad, grads);
  std::vector<at::Tensor> out;
  out.reserve(grads.size());
  for (const auto& t : grads) out.push_back(at::empty_like(t));
  rescale(grad, grads, out, /*in_place=*/false);
  return out;
}

}  // namespace cuda
}  // namespace fastvae
