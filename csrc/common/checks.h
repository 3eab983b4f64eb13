// Argument checks shared by the CPU and CUDA entry points, so both reject bad input with the
// same message. The Python layer (fastvae/functional.py) validates user-facing arguments first;
// these guard the raw ops, which torch.ops.fastvae.* also exposes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastvae {

inline bool is_reduced_or_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A floating 2-D contiguous (rows, cols) operand.
inline void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, "fastvae: ", name, " must be 2-D (rows, cols), got ", t.dim(), "-D");
  TORCH_CHECK(is_reduced_or_float(t.scalar_type()), "fastvae: ", name,
              " must be float64, float32, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fastvae: ", name, " must be contiguous");
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b,
                              const char* bn) {
  TORCH_CHECK(a.device() == b.device(), "fastvae: ", an, " is on ", a.device(), " but ", bn,
              " is on ", b.device());
}

// `part` broadcasts over the leading rows of `full`: same columns, and its row count divides the
// full row count (row r of full reads row r % part.rows of part).
inline void check_row_broadcast(const at::Tensor& full, const char* fn, const at::Tensor& part,
                                const char* pn) {
  check_same_device(full, fn, part, pn);
  TORCH_CHECK(part.dim() == 2 && part.size(1) == full.size(1), "fastvae: ", pn, " has shape ",
              part.sizes(), " but ", fn, " has shape ", full.sizes(), " (columns must match)");
  TORCH_CHECK(part.size(0) > 0 && full.size(0) % part.size(0) == 0, "fastvae: rows of ", pn, " (",
              part.size(0), ") must divide the rows of ", fn, " (", full.size(0), ")");
}

inline void check_same_shape(const at::Tensor& a, const char* an, const at::Tensor& b,
                             const char* bn) {
  check_same_device(a, an, b, bn);
  TORCH_CHECK(a.sizes() == b.sizes(), "fastvae: ", an, " has shape ", a.sizes(), " but ", bn,
              " has shape ", b.sizes());
}

// The accumulation / output dtype: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The 2-element int64 (seed, offset) tensor the sampling ops read their Philox stream from.
inline void check_rng_state(const at::Tensor& s, const at::Tensor& like) {
  TORCH_CHECK(s.scalar_type() == at::kLong && s.numel() == 2 && s.is_contiguous(),
              "fastvae: rng_state must be a contiguous int64 tensor of 2 elements (seed, offset)");
  check_same_device(s, "rng_state", like, "mu");
}

}  // namespace fastvae
