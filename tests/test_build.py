"""The build's CUDA handling (tools/fastvae_build.py): header order, toolkit/torch version checks,
the quiet log, and the CPU fallback when the CUDA compile fails, this last one in a real (tiny)
build through torch's BuildExtension with an nvcc that always fails."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from setuptools import Extension

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import fastvae_build as fb  # noqa: E402

NVCC_VERSION_TEXT = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
"""


def test_wheel_headers_found_only_for_torch_cuda_major(tmp_path):
    (tmp_path / "torch").mkdir()
    inc = tmp_path / "nvidia" / "cu13" / "include"
    inc.mkdir(parents=True)
    assert fb.wheel_cuda_include(str(tmp_path / "torch"), "13.2") == str(inc)
    assert fb.wheel_cuda_include(str(tmp_path / "torch"), "12.8") is None
    assert fb.wheel_cuda_include(str(tmp_path / "torch"), None) is None


def test_wheel_headers_are_searched_after_the_toolkit():
    cxx, nvcc = fb.after_toolkit_flags("/x/nvidia/cu13/include")
    assert cxx == ["-idirafter", "/x/nvidia/cu13/include"]
    # nvcc has no -idirafter of its own: the host compiler's, one -Xcompiler per word.
    assert nvcc == ["-Xcompiler", "-idirafter", "-Xcompiler", "/x/nvidia/cu13/include"]
    assert not any(f.startswith("-I") for f in cxx + nvcc)
    assert fb.after_toolkit_flags(None) == ([], [])


def test_nvcc_version_parsed():
    assert fb.parse_nvcc_version(NVCC_VERSION_TEXT) == (13, 0)
    assert fb.parse_nvcc_version("Cuda compilation tools, release 12.10, V12.10.1") == (12, 10)
    assert fb.parse_nvcc_version("command not found") is None


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_nvcc_version_reports_a_broken_nvcc(tmp_path):
    good = _script(tmp_path / "good", f"cat <<'EOF'\n{NVCC_VERSION_TEXT}EOF\n")
    assert fb.nvcc_version(good) == ((13, 0), "")
    bad = _script(tmp_path / "bad", "echo 'libnvvm.so: cannot open shared object file' >&2; exit 3\n")
    version, why = fb.nvcc_version(bad)
    assert version is None and "exit 3" in why and "libnvvm" in why
    version, why = fb.nvcc_version(str(tmp_path / "missing"))
    assert version is None and "could not run" in why


@pytest.mark.parametrize("toolkit, torch_cuda, level", [
    ((13, 0), "13.0", None),
    ((13, 0), "13.2", "warning"),
    ((13, 2), "13.0", "warning"),
    ((12, 8), "13.0", "error"),
    ((13, 0), "12.6", "error"),
])
def test_version_mismatch_minor_warns_major_refuses(toolkit, torch_cuda, level):
    got, message = fb.version_problem(toolkit, torch_cuda)
    assert got == level
    if level:
        # Both versions named, so the user knows what to change.
        assert f"{toolkit[0]}.{toolkit[1]}" in message and torch_cuda in message


def test_quiet_log_turns_command_lines_into_progress():
    root = "/src/fastvae"
    cxx = (f"[3/9] ccache c++ -MMD -MF /b/kl.o.d -O3 -I{root}/csrc -c -c {root}/csrc/cpu/kl.cpp "
           "-o /b/csrc/cpu/kl.o -O3 -std=c++20")
    nvcc = (f"[7/9] /usr/local/cuda/bin/nvcc --generate-dependencies-with-compile -I{root}/csrc "
            f"-c {root}/csrc/cuda/kl.cu -o /b/csrc/cuda/kl.cuda.o -Xcompiler -idirafter")
    assert fb.quiet_line(cxx, root) == "[3/9] csrc/cpu/kl.cpp"
    assert fb.quiet_line(nvcc, root) == "[7/9] csrc/cuda/kl.cu (nvcc)"
    warning = f"{root}/csrc/cpu/kl.cpp:12:5: warning: unused variable 'x' [-Wunused-variable]"
    assert fb.quiet_line(warning, root) == warning
    assert fb.quiet_line("FAILED: /b/csrc/cuda/kl.cuda.o", root) == "FAILED: /b/csrc/cuda/kl.cuda.o"
    # The command ninja repeats after FAILED:, and torch's chatter, are dropped.
    assert fb.quiet_line(cxx.split("] ", 1)[1], root) is None
    assert fb.quiet_line("Emitting ninja build file /b/build.ninja...", root) is None


def test_first_error_skips_command_lines():
    log = [
        "[1/2] c++ -Werror=return-type -c /s/error_model.cpp -o /b/error_model.o",
        "In file included from /s/csrc/cuda/kl.cu:3:",
        '/usr/include/cuda/std/__cccl/cuda_toolkit.h:39:2: error: #error "CUDA compiler and '
        'CUDA toolkit headers are incompatible"',
        "/s/csrc/cuda/kl.cu(9): error: identifier x is undefined",
        "ninja: build stopped: subcommand failed.",
    ]
    assert fb.first_error(log) == log[2]
    assert fb.first_error(log[:2]) is None


def test_strip_cuda_leaves_the_cpu_build():
    ext = Extension("fastvae._C", ["csrc/register.cpp", "csrc/cpu/kl.cpp", "csrc/cuda/kl.cu"],
                    define_macros=[("FASTVAE_WITH_CUDA", None), ("KEEP", "1")],
                    libraries=["c10", "torch", "cudart", "c10_cuda", "torch_cuda"])
    ext.extra_compile_args = {"cxx": ["-O3"], "nvcc": ["-O3"]}
    assert fb.has_cuda_sources(ext)
    fb.strip_cuda(ext)
    assert ext.sources == ["csrc/register.cpp", "csrc/cpu/kl.cpp"] and not fb.has_cuda_sources(ext)
    assert ext.define_macros == [("KEEP", "1")]
    assert ext.extra_compile_args == {"cxx": ["-O3"]}
    assert ext.libraries == ["c10", "torch"]


def test_fallback_warning_says_what_and_how():
    text = fb.fallback_warning("kl.cu(3): error: boom", "13.0 (/usr/local/cuda/bin/nvcc)",
                               "2.15.0+cu132", "13.2")
    for part in ("CPU kernels only", "kl.cu(3): error: boom", "13.0", "2.15.0+cu132", "13.2",
                 "FASTVAE_CUDA=1", "FASTVAE_CUDA=0"):
        assert part in text


# --- one real build ------------------------------------------------------------------------------

MINI_SETUP = """
import os, sys
sys.path.insert(0, {tools!r})
import fastvae_build
from setuptools import setup
from torch.utils import cpp_extension

cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
forced = {{"1": True, "0": False}}.get(os.environ.get("FASTVAE_CUDA", ""))
ext = cpp_extension.CUDAExtension(
    "mini._C", ["mini.cpp", "kern.cu"], define_macros=[("FASTVAE_WITH_CUDA", None)],
    extra_compile_args={{"cxx": ["-O0"], "nvcc": ["-O0"]}})
setup(name="mini", version="0", ext_modules=[ext], cmdclass={{"build_ext": fastvae_build.make_build_ext(
    cpp_extension.BuildExtension.with_options(use_ninja=True), os.path.dirname(os.path.abspath(__file__)),
    cuda_forced=lambda: forced, describe_toolkit=lambda: "13.0 (fake nvcc)")}})
"""

MINI_CPP = """
#include <Python.h>
#ifdef FASTVAE_WITH_CUDA
static const int cuda_built = 1;
#else
static const int cuda_built = 0;
#endif
static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&module_def);
  if (m) PyModule_AddIntConstant(m, "cuda_built", cuda_built);
  return m;
}
"""


@pytest.fixture(scope="module")
def broken_toolkit(tmp_path_factory) -> Path:
    """A CUDA toolkit whose nvcc reports a version and then fails every compile."""
    home = tmp_path_factory.mktemp("fake_cuda")
    (home / "bin").mkdir()
    (home / "include").mkdir()
    _script(home / "bin" / "nvcc", textwrap.dedent(f"""\
        case " $* " in *" --version "*) cat <<'EOF'
        {NVCC_VERSION_TEXT}EOF
        exit 0;; esac
        echo "kern.cu(1): error: this nvcc is broken on purpose" >&2
        exit 1
        """))
    return home


def _build(project: Path, toolkit: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("FASTVAE_CUDA", "VERBOSE")}
    environ.update(CUDA_HOME=str(toolkit), TORCH_CUDA_ARCH_LIST="9.0", MAX_JOBS="2", **env)
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=project,
                          env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)


@pytest.fixture
def mini_project(tmp_path) -> Path:
    if shutil.which("ninja") is None and not (Path(sys.executable).parent / "ninja").exists():
        pytest.skip("needs ninja")
    (tmp_path / "setup.py").write_text(MINI_SETUP.format(tools=str(ROOT / "tools")))
    (tmp_path / "mini.cpp").write_text(MINI_CPP)
    (tmp_path / "kern.cu").write_text("__global__ void k() {}\n")
    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "__init__.py").write_text("")
    return tmp_path


def test_broken_cuda_toolchain_still_builds_the_cpu_extension(mini_project, broken_toolkit):
    out = _build(mini_project, broken_toolkit)
    assert out.returncode == 0, out.stdout
    text = out.stdout
    assert "WARNING: fastvae's CUDA kernels failed to compile" in text
    assert "this nvcc is broken on purpose" in text  # the first compiler error, quoted
    assert "13.0 (fake nvcc)" in text and "FASTVAE_CUDA=1" in text
    assert "-MMD" not in text  # quiet: no compiler command lines
    probe = subprocess.run([sys.executable, "-c", "import torch, mini._C as m; print(m.cuda_built)"],
                           cwd=mini_project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert probe.returncode == 0 and probe.stdout.strip() == "0", probe.stdout


def test_forced_cuda_build_fails_hard_and_verbose_shows_commands(mini_project, broken_toolkit):
    out = _build(mini_project, broken_toolkit, FASTVAE_CUDA="1", VERBOSE="1")
    assert out.returncode != 0
    assert "this nvcc is broken on purpose" in out.stdout
    assert "CPU kernels only" not in out.stdout
    assert "kern.cu -o" in out.stdout  # VERBOSE=1: the full nvcc command line
    assert not list(mini_project.glob("mini/_C*.so"))


def test_import_refuses_a_cpu_without_the_builds_isa():
    from fastvae import _extension

    zen4 = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    assert _extension.missing_cpu_flags("avx512", zen4) == []
    assert _extension.missing_cpu_flags("avx512", {"avx2", "fma", "f16c"}) == [
        "avx512f", "avx512bw", "avx512vl", "avx512dq"]
    assert _extension.missing_cpu_flags("avx2", {"sse4_2"}) == ["avx2", "fma", "f16c"]
    assert _extension.missing_cpu_flags("generic", set()) == []


def test_recorded_isa_is_the_built_one_and_this_cpu_has_it():
    from fastvae import _cpu_isa, _extension

    assert _extension.CPU_ISA == _cpu_isa.CPU_ISA
    assert _extension.CPU_ISA in ("avx512", "avx2", "generic")
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split())
    assert _extension.missing_cpu_flags(_extension.CPU_ISA, flags) == []
