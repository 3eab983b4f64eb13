"""Build fastvae's extension: CPU kernels always, CUDA kernels when a CUDA toolchain is found.

Environment:
  FASTVAE_CUDA=0|1      force the CUDA build off / on (default: on when nvcc and a CUDA build of
                        torch are found; a GPU is never required to build). Unset, a CUDA compile
                        that fails prints a warning and the CPU-only extension is built instead;
                        =1 makes it fatal.
  TORCH_CUDA_ARCH_LIST  CUDA architectures (default "8.0;9.0" when no GPU is visible).
  FASTVAE_CPU_ISA=avx512|avx2|generic
                        the vector ISA the CPU kernels are compiled for (default: the one torch
                        picks on this CPU, torch.backends.cpu.get_cpu_capability()). The build runs
                        only on CPUs with that ISA: import refuses others with this hint.
  MAX_JOBS              parallel compile jobs (ninja).
  VERBOSE=1             show every compiler command line (default: progress, warnings, errors).
  FASTVAE_EMU=0|1       also build fastvae._C_emu: csrc/cuda/*.cu compiled as C++ and run on CPU
                        tensors by the SIMT emulator of csrc/emu/ (torch.ops.fastvae_emu.*).
  FASTVAE_EMU_ASAN=1    build fastvae._C_emu alone, under AddressSanitizer (for --build-lib elsewhere;
                        tests/emu.py loads it from FASTVAE_EMU_LIB).
  FASTVAE_SKIP_EXT=1    install the Python package only, reusing an extension already built in
                        place (`python setup.py build_ext --inplace`); the Makefile uses this so
                        that `pip install -e .` does not compile everything a second time.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import fastvae_build  # noqa: E402  (tools/fastvae_build.py: header order, fallback, quiet log)

VERBOSE = os.environ.get("VERBOSE", "") not in ("", "0")
if not VERBOSE:
    # torch logs "No CUDA runtime is found" (no GPU is needed to build) and its own CUDA version
    # notes, which the checks below replace.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        sys.exit(f"setup.py: {name} must be 0 or 1, got {value!r}")
    return value == "1"


def _find_cuda_home() -> str | None:
    # torch guesses /usr/local when nvcc is not on PATH; prefer an explicit, existing toolkit.
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(nvcc)) if nvcc else None


_TOOLKIT = "not found"  # what the CUDA checks found, for the fallback warning


def _skip_cuda(message: str, forced: bool | None) -> bool:
    """Refuse the CUDA build: fatal with FASTVAE_CUDA=1, else a loud note and a CPU build."""
    if forced:
        sys.exit(f"setup.py: error: {message} (FASTVAE_CUDA=1)")
    print(f"setup.py: error: {message}\nsetup.py: building the CPU kernels only "
          "(FASTVAE_CUDA=0 silences this, FASTVAE_CUDA=1 makes it fatal)", file=sys.stderr)
    return False


def _want_cuda() -> bool:
    global _TOOLKIT
    forced = _flag("FASTVAE_CUDA")
    has_torch_cuda = torch.version.cuda is not None
    cuda_home = _find_cuda_home()
    if forced is False:
        return False
    if forced is True and not (has_torch_cuda and cuda_home):
        sys.exit("setup.py: FASTVAE_CUDA=1 but no CUDA toolkit (nvcc) or no CUDA build of torch found")
    if not (has_torch_cuda and cuda_home):
        return False
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    version, why = fastvae_build.nvcc_version(nvcc)
    if version is None:
        return _skip_cuda(why, forced)
    _TOOLKIT = f"{version[0]}.{version[1]} ({nvcc})"
    level, message = fastvae_build.version_problem(version, torch.version.cuda)
    if level == "error":
        return _skip_cuda(message, forced)
    if level == "warning":
        print(f"setup.py: warning: {message}", file=sys.stderr)
    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension.CUDA_HOME = cuda_home  # torch read CUDA_HOME at import; point it at the real toolkit
    return True


# ATen's Vectorized uses its AVX2 / AVX512 specialisations only under its CPU_CAPABILITY macros.
_ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
    # GCC 12 warns about the _mm512_undefined_* of its own AVX-512 headers under -O3.
    "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
               "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512", "-Wno-maybe-uninitialized",
               "-Wno-uninitialized"],
    "generic": [],
}


def _cpu_isa() -> str:
    isa = os.environ.get("FASTVAE_CPU_ISA", "")
    if isa:
        if isa not in _ISA_FLAGS:
            sys.exit(f"setup.py: FASTVAE_CPU_ISA must be one of {sorted(_ISA_FLAGS)}, got {isa!r}")
        return isa
    if os.uname().machine != "x86_64":
        return "generic"
    # The capability torch's own kernels run with here (it honours ATEN_CPU_CAPABILITY).
    return {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "generic")


def _write_if_changed(path: str, text: str) -> None:
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def _openmp_flags() -> list[str]:
    """-fopenmp when torch's intra-op backend is OpenMP.

    ATen's at::parallel_for is a header template: with torch's OpenMP backend it is an
    `omp parallel` region compiled into the extension, and without -fopenmp it silently runs every
    task on the calling thread. The GOMP symbols resolve to the libgomp torch loads.
    """
    info = torch.__config__.parallel_info()
    if "backend: OpenMP" not in info:
        return []  # the native backend's thread pool lives in libtorch: nothing to compile in
    if sys.platform == "darwin":  # Apple's clang has no -fopenmp
        print("setup.py: warning: no OpenMP on macOS: the CPU kernels will run on one thread", file=sys.stderr)
        return []
    return ["-fopenmp"]


def _unity_sources(pattern: str, name: str, parts: int) -> list[str]:
    """The files of ``pattern`` compiled as ``parts`` translation units (build/unity/NAME_k.cpp, each
    including every parts-th file): csrc/autograd/'s files each spend ~20 s of a ~21 s compile
    parsing the same torch autograd headers. The CMake build still compiles each file on its own,
    so every file keeps including what it uses."""
    out_dir = os.path.join(ROOT, "build", "unity")
    os.makedirs(out_dir, exist_ok=True)
    files = sorted(glob.glob(os.path.join(ROOT, pattern)))
    sources = []
    for k in range(min(parts, len(files))):
        body = "".join(f'#include "{os.path.relpath(f, os.path.join(ROOT, "csrc"))}"\n' for f in files[k::parts])
        path = os.path.join(out_dir, f"{name}_{k}.cpp")
        _write_if_changed(path, f"// Generated by setup.py: a share of {pattern} in one translation unit.\n{body}")
        sources.append(os.path.relpath(path, ROOT))
    return sources


def _extension():
    with_cuda = _want_cuda()
    sources = (["csrc/register.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
               + _unity_sources("csrc/autograd/*.cpp", "autograd", parts=2))
    # torch adds the -std it needs (C++20 since 2.12). -Wno-unknown-pragmas is for ATen's own
    # `#pragma unroll`; it would hide an ignored `#pragma omp` too, which
    # tests/test_cpu_kernels.py catches instead (fastvae._C.parallel_threads).
    cxx = ["-O3", "-fvisibility=hidden", "-Wno-unknown-pragmas"] + _openmp_flags()
    isa = _cpu_isa()
    cxx += _ISA_FLAGS[isa]
    _write_if_changed(os.path.join(ROOT, "fastvae", "_cpu_isa.py"),
                      '"""Written by setup.py: the vector ISA fastvae._C\'s CPU kernels were compiled for. fastvae/'
                      '_extension.py checks this CPU has it before loading the extension."""\n'
                      f'CPU_ISA = "{isa}"\n')
    include_dirs = [os.path.join(ROOT, "csrc")]
    define_macros = []
    if not with_cuda:
        return cpp_extension.CppExtension(
            "fastvae._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, define_macros=define_macros,
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    # pip's CUDA wheels carry the library headers (cusparse, cublas) a bare toolkit may lack;
    # searched after the toolkit's, whose CUDA runtime headers must win (see fastvae_build).
    wheel_cxx, wheel_nvcc = fastvae_build.after_toolkit_flags(
        fastvae_build.wheel_cuda_include(os.path.dirname(torch.__file__), torch.version.cuda))
    cxx += wheel_cxx
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define_macros.append(("FASTVAE_WITH_CUDA", None))
    nvcc = ["-O3", "--expt-relaxed-constexpr", "--extended-lambda", "-lineinfo"] + wheel_nvcc
    return cpp_extension.CUDAExtension(
        "fastvae._C", sources, include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
    )


def _emu_extension():
    """fastvae._C_emu: the CUDA kernel sources compiled as C++ against the SIMT emulator (csrc/emu/)."""
    # One C++ file per .cu that includes it (setuptools would hand a .cu source to nvcc), and one
    # for register.cpp, whose object would otherwise share its path with fastvae._C's.
    wrap_dir = os.path.join(ROOT, "build", "emu_src")
    os.makedirs(wrap_dir, exist_ok=True)
    sources = sorted(glob.glob("csrc/emu/*.cpp"))
    for src in ["csrc/register.cpp"] + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))):
        name = os.path.splitext(os.path.basename(src))[0]
        wrapper = os.path.join(wrap_dir, name + "_emu.cpp")  # not register.cpp: it would include itself
        text = f'// Generated by setup.py: {src} compiled as C++ for the emulator.\n#include "{src[5:]}"\n'
        _write_if_changed(wrapper, text)
        sources.append(os.path.relpath(wrapper, ROOT))
    # -O1 keeps the compile short; the emulator's time goes into context switches, not arithmetic.
    cxx = ["-O1", "-g0", "-fvisibility=hidden", "-Wno-unknown-pragmas", "-Wno-class-memaccess",
           "-Wno-sign-compare", "-Wno-maybe-uninitialized", "-DFASTVAE_EMU"]
    link = []
    if _flag("FASTVAE_EMU_ASAN"):  # AddressSanitizer: run with libasan preloaded (see .ci/run)
        cxx += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        link += ["-fsanitize=address"]
    # csrc/emu/include first: its stand-ins shadow torch's CUDA headers.
    include_dirs = [os.path.join(ROOT, "csrc", "emu", "include"), os.path.join(ROOT, "csrc")]
    return cpp_extension.CppExtension("fastvae._C_emu", sources, include_dirs=include_dirs,
                                      extra_compile_args={"cxx": cxx}, extra_link_args=link)


def _ext_modules():
    if _flag("FASTVAE_SKIP_EXT"):
        return []
    if _flag("FASTVAE_EMU_ASAN"):  # the sanitised emulation build alone, built out of place
        return [_emu_extension()]
    return [_extension()] + ([_emu_extension()] if _flag("FASTVAE_EMU") else [])


setup(
    ext_modules=_ext_modules(),
    cmdclass={"build_ext": fastvae_build.make_build_ext(
        cpp_extension.BuildExtension.with_options(use_ninja=True), ROOT,
        cuda_forced=lambda: _flag("FASTVAE_CUDA"), describe_toolkit=lambda: _TOOLKIT)},
)
