"""The CUDA row kernels really use 16-byte memory instructions: checked in the PTX that nvcc makes
for sm_90, so it runs wherever nvcc is (CI included), without a GPU."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import fastvae_build  # noqa: E402  (the header order setup.py uses)


def _nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and Path(home, "bin", "nvcc").exists():
            return str(Path(home, "bin", "nvcc"))
    return shutil.which("nvcc")


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(
    NVCC is None or torch.version.cuda is None, reason="needs nvcc and a CUDA build of torch"
)

# Elements per 16 bytes for the scalar type that opens a functor's mangled template arguments.
PACK = {"f": 4, "d": 2, "N3c104HalfE": 8, "N3c108BFloat16E": 8}
# Global loads a packed row-sum kernel may issue: 16-byte packs of its floating operands, and
# the 1-byte-per-element targets of the Bernoulli likelihood (2, 4 or 8 bytes a pack).
PACKED_LOADS = {"ld.global.v4.f32", "ld.global.v4.u32", "ld.global.v2.f64",
                "ld.global.v2.u8", "ld.global.u32", "ld.global.v2.u32"}
SIXTEEN_BYTES = {"ld.global.v4.f32", "ld.global.v4.u32", "ld.global.v2.f64"}


def _ptx(source: str, out_dir: Path) -> subprocess.Popen:
    includes = [ROOT / "csrc", *cpp_extension.include_paths(), Path(sysconfig.get_paths()["include"])]
    # pip's CUDA library headers go after the toolkit's, as in setup.py.
    _, after_toolkit = fastvae_build.after_toolkit_flags(
        fastvae_build.wheel_cuda_include(os.path.dirname(torch.__file__), torch.version.cuda))
    cmd = [NVCC, "-ptx", "-arch=sm_90", "-O3", "-std=c++20", "--expt-relaxed-constexpr", "--extended-lambda",
           "-DFASTVAE_WITH_CUDA", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
           "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
           "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
           *(f"-I{p}" for p in includes), *after_toolkit, str(ROOT / "csrc" / "cuda" / source),
           "-o", str(out_dir / (source + ".ptx"))]
    # Own process group: killing it ends nvcc's children (cicc, ptxas, the host compiler) too.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> List[Tuple[str, str]]:
    """(mangled name, body) of every kernel in the PTX of the KL and likelihood sources."""
    out = tmp_path_factory.mktemp("ptx")
    procs = {}
    try:
        for src in ("kl.cu", "likelihood.cu", "sampling.cu"):
            procs[src] = _ptx(src, out)
        found = []
        for src, proc in procs.items():
            log, _ = proc.communicate(timeout=900)
            assert proc.returncode == 0, f"nvcc failed on {src}:\n{log}"
            text = (out / (src + ".ptx")).read_text()
            for body in re.split(r"\n(?=\.visible \.entry|\.entry)", text):
                m = re.match(r"\.(?:visible )?\.?entry\s+(\S+)\(", body)
                if m:
                    found.append((m.group(1), body))
        return found
    finally:
        # One failure (or timeout) must not leave the other nvcc processes compiling.
        for proc in procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


def _packed(kernels, kind: str = "row_sums_by_(?:lanes|block)_kernel", functor: str = "Rows") -> Dict[str, str]:
    """Kernels of one skeleton instantiated with the functor's own pack width (not the V = 1
    fallback)."""
    packed = {}
    for name, body in kernels:
        m = re.search(kind + r"ILi(\d+)E", name)
        if not m or functor not in name:
            continue
        scalar = re.search(functor + r"I(f|d|N3c104HalfE|N3c108BFloat16E)", name)
        assert scalar, f"unknown scalar type in {name}"
        if int(m.group(1)) == PACK[scalar.group(1)]:
            packed[name] = body
    return packed


def _global_loads(body: str) -> set:
    return set(re.findall(r"ld\.global(?:\.nc)?(?:\.v\d)?\.\w+", body.replace(".nc", "")))


def test_packed_row_sums_read_their_operands_sixteen_bytes_at_a_time(kernels):
    packed = {n: b for n, b in _packed(kernels).items() if "SampleAndKlRows" not in n}
    # KL, Bernoulli (3 target types) and Gaussian, 4 dtypes each, lane groups of 8 and 32 and blocks.
    assert len(packed) == (1 + 3 + 1) * 4 * 3
    for name, body in packed.items():
        loads = _global_loads(body)
        assert loads & SIXTEEN_BYTES, name
        assert loads <= PACKED_LOADS, (name, loads - PACKED_LOADS)


def test_bernoulli_gradient_is_stored_one_pack_per_instruction(kernels):
    bernoulli = _packed(kernels, functor="BernoulliRows")
    assert len(bernoulli) == 3 * 4 * 3
    for name, body in bernoulli.items():
        # The one global store is the row's sum; the gradient goes out 16 bytes an instruction.
        assert "st.v4.b32" in body and len(re.findall(r"\bst\.global", body)) == 1, name


def test_fused_sampling_kernels_move_sixteen_bytes_at_a_time(kernels):
    """Sample + KL forward and the sampling backward: mu, logvar and grad_z read in 16-byte packs,
    z and the gradients written one vector instruction per pack."""
    forward = _packed(kernels, functor="SampleAndKlRows")
    backward = _packed(kernels, kind="row_map_kernel", functor="SampleGrads")
    assert len(forward) == 4 * 3 and len(backward) == 4
    for name, body in {**forward, **backward}.items():
        # Read-only (.nc) loads are the math library's tables (sin/cos range reduction).
        loads = set(re.findall(r"ld\.global(?!\.nc)(?:\.v\d)?\.\w+", body))
        assert loads & SIXTEEN_BYTES and "st.v4.b32" in body, name
        # Besides the packs only the 2-int64 Philox state and, backward, grad_kl's value per row
        # (in the accumulation type).
        allowed = SIXTEEN_BYTES | {"ld.global.u64"}
        if name in backward:
            allowed |= {"ld.global.f64" if "SampleGradsIdE" in name else "ld.global.f32"}
        assert loads <= allowed, (name, loads - allowed)


def test_plain_sampling_kernel_writes_each_group_as_one_pack(kernels):
    """reparameterize_kernel (both the packed-operand and the scalar-operand variant) writes a
    Philox group's four z values with one vector store, not four scalar stores 16 bytes apart
    from the next thread's (issue 22)."""
    plain = {name: body for name, body in kernels if "reparameterize_kernel" in name}
    assert len(plain) == 4 * 2, sorted(plain)
    vector_store = {"f": "st.v4.b32", "N3c104HalfE": "st.v2.b32", "N3c108BFloat16E": "st.v2.b32"}
    for name, body in plain.items():
        scalar = re.search(r"reparameterize_kernelI(f|d|N3c104HalfE|N3c108BFloat16E)Lb", name)
        assert scalar, name
        if scalar.group(1) in vector_store:
            assert vector_store[scalar.group(1)] in body, name
