"""Build helpers for setup.py: CUDA header order, toolkit/torch version checks, a CPU fallback when
the CUDA compile fails, and a quiet build log.

Kept out of setup.py so that the logic can be tested function by function (tests/test_build.py)
without compiling anything.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import threading
from typing import Callable, List, Optional, Sequence, Tuple

CUDA_DEFINE = "FASTVAE_WITH_CUDA"
# Libraries CUDAExtension links on top of CppExtension's.
_CUDA_LIBRARIES = {"cudart", "c10_cuda", "torch_cuda"}


# ---------------------------------------------------------------------------------------------
# Header order
# ---------------------------------------------------------------------------------------------

def wheel_cuda_include(torch_dir: str, torch_cuda: Optional[str]) -> Optional[str]:
    """The include folder of pip's CUDA library wheels (nvidia/cuNN/include) next to torch, if any.

    It carries cuBLAS/cuSPARSE/cuRAND headers that torch's CUDA headers include and a bare toolkit
    may lack, but also CUDA runtime headers of the wheel's (possibly newer) CUDA release.
    """
    if not torch_cuda:
        return None
    major = torch_cuda.split(".")[0]
    path = os.path.abspath(os.path.join(torch_dir, "..", "nvidia", f"cu{major}", "include"))
    return path if os.path.isdir(path) else None


def after_toolkit_flags(include: Optional[str]) -> Tuple[List[str], List[str]]:
    """(C++ flags, nvcc flags) that search `include` after every other include folder.

    With -I the wheel's CUDA runtime headers (say 13.2) would shadow the toolkit's own (13.0) and
    CCCL stops with "CUDA compiler and CUDA toolkit headers are incompatible"; -idirafter keeps
    the toolkit's headers first and still finds the library headers only the wheel has. nvcc
    preprocesses through the host compiler, so the flag reaches it through -Xcompiler.
    """
    if not include:
        return [], []
    return ["-idirafter", include], ["-Xcompiler", "-idirafter", "-Xcompiler", include]


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------

def parse_nvcc_version(text: str) -> Optional[Tuple[int, int]]:
    """(major, minor) from `nvcc --version` output ("... release 13.0, V13.0.88")."""
    m = re.search(r"release (\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def nvcc_version(nvcc: str) -> Tuple[Optional[Tuple[int, int]], str]:
    """(version or None, what went wrong) for the nvcc at `nvcc`."""
    try:
        out = subprocess.run([nvcc, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"`{nvcc} --version` could not run: {err}"
    version = parse_nvcc_version(out.stdout)
    if out.returncode != 0 or version is None:
        tail = out.stdout.strip().splitlines()[-1:] or ["no output"]
        return None, f"`{nvcc} --version` failed (exit {out.returncode}): {tail[0]}"
    return version, ""


def version_problem(toolkit: Tuple[int, int], torch_cuda: str) -> Tuple[Optional[str], str]:
    """("warning" | "error" | None, message) for a toolkit vs torch CUDA release mismatch.

    Same major release: CUDA keeps a major release's ABI, so a different minor only warrants a
    warning. Different major: the kernels could not link against torch's CUDA libraries.
    """
    parts = torch_cuda.split(".")
    torch_ver = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    found = f"CUDA toolkit (nvcc) {toolkit[0]}.{toolkit[1]}, torch built with CUDA {torch_cuda}"
    if toolkit[0] != torch_ver[0]:
        return "error", (f"CUDA major release mismatch: {found}. Install a CUDA {torch_ver[0]}.x "
                         f"toolkit (CUDA_HOME) or a torch built for CUDA {toolkit[0]}.")
    if toolkit[1] != torch_ver[1]:
        return "warning", f"CUDA minor release mismatch ({found}); this usually works."
    return None, ""


# ---------------------------------------------------------------------------------------------
# Quiet build log
# ---------------------------------------------------------------------------------------------

_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]\s+(.*)$")
_COMMAND = re.compile(r"^\S*(?:c\+\+|g\+\+|gcc|cc|clang\+*|nvcc|ccache|x86_64-linux-gnu-g\+\+)\s")
_NOISE = (
    "Emitting ninja build file", "Compiling objects...", "Allowing ninja to set a default number",
    "ninja: no work to do",
)
_ERROR = re.compile(r"(?:\berror\b|#error)", re.IGNORECASE)


def quiet_line(line: str, root: str) -> Optional[str]:
    """What a quiet build prints for one line of build output (None: nothing).

    Compiler command lines become "[n/m] csrc/x.cpp"; compiler diagnostics pass unchanged.
    """
    stripped = line.rstrip("\n")
    m = _PROGRESS.match(stripped)
    if m:
        cmd = m.group(3)
        src = re.search(r"(\S+)\s+-o\s+\S+\.o\b", cmd)  # the source precedes "-o x.o"
        what = src.group(1).strip("'\"") if src else cmd.split()[0]
        if os.path.isabs(what) and what.startswith(root.rstrip("/") + "/"):
            what = os.path.relpath(what, root)
        tool = " (nvcc)" if "nvcc" in cmd.split(" -", 1)[0] else ""
        return f"[{m.group(1)}/{m.group(2)}] {what}{tool}"
    if _COMMAND.match(stripped) or any(stripped.startswith(n) for n in _NOISE):
        return None
    return stripped


def first_error(lines: Sequence[str]) -> Optional[str]:
    """The first compiler error line of a build log (command lines skipped)."""
    for line in lines:
        s = line.strip()
        if not s or _PROGRESS.match(s) or _COMMAND.match(s) or s.startswith("ninja:"):
            continue
        if _ERROR.search(s) and "-Werror" not in s:
            return s
    return None


class BuildLog:
    """Sends what this process and its children write to fds 1 and 2 through `quiet_line`
    (or unchanged when verbose), keeping every line for error reports."""

    def __init__(self, root: str, verbose: bool):
        self.root, self.verbose = root, verbose
        self.lines: List[str] = []

    def __enter__(self) -> "BuildLog":
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), daemon=True)
        self._thread.start()
        return self

    def _pump(self, read_fd: int) -> None:
        out = self._saved[0]
        with os.fdopen(read_fd, "r", errors="replace") as pipe:
            for line in pipe:
                self.lines.append(line.rstrip("\n"))
                shown = line.rstrip("\n") if self.verbose else quiet_line(line, self.root)
                if shown is not None:
                    os.write(out, (shown + "\n").encode())

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Restoring fds 1 and 2 closes the pipe's last write ends: the pump sees EOF.
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        self._thread.join(timeout=30)
        for fd in self._saved:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# CPU fallback
# ---------------------------------------------------------------------------------------------

def has_cuda_sources(ext) -> bool:
    return any(s.endswith(".cu") for s in ext.sources)


def strip_cuda(ext) -> None:
    """Turn a CUDAExtension into the CPU-only build of the same module, in place."""
    ext.sources = [s for s in ext.sources if not s.endswith((".cu", ".cuh"))]
    ext.define_macros = [m for m in ext.define_macros if m[0] != CUDA_DEFINE]
    if isinstance(ext.extra_compile_args, dict):
        ext.extra_compile_args.pop("nvcc", None)
        ext.extra_compile_args.pop("nvcc_dlink", None)
    ext.libraries = [lib for lib in ext.libraries if lib not in _CUDA_LIBRARIES]


def fallback_warning(error: str, toolkit: str, torch_version: str, torch_cuda: Optional[str]) -> str:
    """The loud message printed when the CUDA compile failed and the CPU build goes on."""
    bar = "=" * 78
    return "\n".join([
        bar,
        "WARNING: fastvae's CUDA kernels failed to compile; building the CPU kernels only.",
        f"  first error:  {error}",
        f"  CUDA toolkit: {toolkit}",
        f"  torch:        {torch_version} (built with CUDA {torch_cuda})",
        "  The package installs and runs on the CPU (fastvae.CUDA_BUILT is False).",
        "  FASTVAE_CUDA=1 makes this error fatal; FASTVAE_CUDA=0 skips CUDA without this warning;",
        "  VERBOSE=1 shows the full compiler output.",
        bar,
    ])


def make_build_ext(base: type, root: str, cuda_forced: Callable[[], Optional[bool]],
                   describe_toolkit: Callable[[], str]) -> type:
    """A BuildExtension subclass with the quiet log and, unless CUDA is forced on, a CPU build
    of every extension whose CUDA compile failed."""
    verbose = os.environ.get("VERBOSE", "") not in ("", "0")

    class FastvaeBuildExt(base):  # type: ignore[misc, valid-type]
        def build_extensions(self) -> None:
            saved = {id(e): copy.deepcopy(e.extra_compile_args) for e in self.extensions}
            log = BuildLog(root, verbose)
            try:
                with log:
                    super().build_extensions()
                return
            except Exception as err:  # noqa: BLE001 - any compile/link failure of the CUDA build
                cuda_exts = [e for e in self.extensions if has_cuda_sources(e)]
                # None: torch's CUDA checks failed before any extension was built.
                failed = getattr(self, "_fastvae_building", None)
                if (cuda_forced() is True or not cuda_exts
                        or (failed is not None and not has_cuda_sources(failed))):
                    self._report(log, err)
                    raise
                import torch
                error = first_error(log.lines) or f"{type(err).__name__}: {err}".splitlines()[0]
                print(fallback_warning(error, describe_toolkit(), torch.__version__,
                                       torch.version.cuda), file=sys.stderr, flush=True)
            for ext in self.extensions:
                ext.extra_compile_args = saved[id(ext)]  # torch's build_extensions appends flags
            for ext in cuda_exts:
                strip_cuda(ext)
            with BuildLog(root, verbose):
                super().build_extensions()

        def build_extension(self, ext) -> None:
            self._fastvae_building = ext  # which one failed, if one does
            super().build_extension(ext)
            self._fastvae_building = None

        @staticmethod
        def _report(log: BuildLog, err: BaseException) -> None:
            error = first_error(log.lines)
            if error and not verbose:
                print(f"fastvae build failed; first error: {error}\n(VERBOSE=1 shows the full "
                      "compiler output)", file=sys.stderr, flush=True)

    return FastvaeBuildExt

