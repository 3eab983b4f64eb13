// Large CPU outputs backed by transparent huge pages.
//
// A fresh output of hundreds of MB is first touched inside the kernel, and faulting it in 4 KiB
// at a time costs more than the kernel's own work: filling a new 412 MB tensor takes 81 ms here,
// 16 ms once its memory asks for 2 MiB pages. glibc maps every allocation of 32 MiB or more
// afresh and unmaps it on free, so the hint lives and dies with the tensor's memory.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastvae {
namespace cpu {

constexpr int64_t kHugePageOutputBytes = int64_t{32} << 20;

// Returns t, a tensor not yet written, after asking the kernel to back the 2 MiB-aligned part of
// its memory with huge pages when it is large. A refused hint (THP disabled) changes nothing.
inline at::Tensor large_output(at::Tensor t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
  if (bytes >= kHugePageOutputBytes && t.is_contiguous()) {
    constexpr uintptr_t kHuge = uintptr_t{1} << 21;
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + bytes) & ~(kHuge - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return t;
}

}  // namespace cpu
}  // namespace fastvae
