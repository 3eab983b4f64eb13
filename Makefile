# One-command set-up on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create .venv, install torch and the tools, and build the extension incrementally.
# CUDA kernels are compiled when nvcc is found and a GPU is visible, or with FASTVAE_CUDA=1 (CI sets
# it): on a machine without a GPU, nvcc would take most of `make demo`'s minutes for kernels it
# cannot run (the tests run them through the emulator, built from the same sources).

VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= 2.14.1
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME
MAX_JOBS ?= 2
export MAX_JOBS
ifeq ($(origin FASTVAE_CUDA),undefined)
ifeq ($(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU'),0)
FASTVAE_CUDA := 0
export FASTVAE_CUDA
$(info make: no GPU visible: building the CPU kernels only (FASTVAE_CUDA=1 builds the CUDA kernels too))
endif
endif
# Test processes of `make test` (pytest-xdist); 1 runs them in this process.
PYTEST_JOBS ?= 2
# Quiet by default (progress, warnings, errors); VERBOSE=1 shows every command line.
VERBOSE ?=
# Exported only when set: `cmake --build` turns verbose whenever VERBOSE exists, even empty.
ifneq ($(filter-out 0,$(VERBOSE)),)
export VERBOSE
else
unexport VERBOSE
endif
Q := $(if $(filter-out 0,$(VERBOSE)),,-q)
# `make test` also builds fastvae._C_emu (the CUDA kernels run on the CPU by csrc/emu/'s SIMT
# emulator), which only the tests use, and fails rather than skips its `emu` tests when it is
# missing. FASTVAE_EMU=0 skips it. `make build` / `make demo` build only what the demo runs.
FASTVAE_EMU ?= 1
unexport FASTVAE_EMU
TORCH_PREFIX = $(shell $(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')
NVIDIA_LIB = $(shell $(PY) -c 'import os, torch; print(os.path.abspath(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "lib")))')

.PHONY: setup build build-emu demo test test-emu-asan test-other-isa gpu-kit bench bench-tables cmake-check clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install $(Q) --upgrade pip "setuptools>=77" wheel
	$(PY) -m pip install $(Q) torch==$(TORCH) ninja numpy tqdm matplotlib pytest pytest-benchmark pytest-xdist scikit-learn
	touch $@

setup: $(VENV)/.installed

# Incremental (ninja) in-place build of the CPU (and CUDA) kernels, then an editable install
# for the `fastvae` command.
build: setup
	FASTVAE_EMU=0 $(PY) setup.py $(Q) build_ext --inplace
	FASTVAE_SKIP_EXT=1 $(PY) -m pip install $(Q) --no-build-isolation --no-deps -e .
	$(PY) -c "import fastvae; print('fastvae built; CUDA kernels:', fastvae.CUDA_BUILT)"

demo: build
	$(VENV)/bin/fastvae train --out runs/demo

# The emulator on top (the kernels above are up to date: ninja only adds fastvae._C_emu).
build-emu: build
ifneq ($(FASTVAE_EMU),0)
	FASTVAE_EMU=1 $(PY) setup.py $(Q) build_ext --inplace
endif

test: build-emu
	FASTVAE_REQUIRE_EMU=$(FASTVAE_EMU) $(PY) -m pytest tests -q -p no:cacheprovider $(if $(filter-out 1,$(PYTEST_JOBS)),-n $(PYTEST_JOBS))

# The emulated CUDA kernels once more under AddressSanitizer: a kernel reading or writing outside
# its tensors fails. Built out of place (build/asan), so the normal fastvae._C_emu stays as it is.
# libstdc++ is preloaded too: ASan must find its __cxa_throw at start (python loads it later).
test-emu-asan: build
	FASTVAE_EMU_ASAN=1 $(PY) setup.py -q build_ext --build-lib build/asan --build-temp build/asan-temp
	LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0 \
	  FASTVAE_EMU_LIB="$$(ls build/asan/fastvae/_C_emu*.so)" FASTVAE_REQUIRE_EMU=1 \
	  $(PY) -m pytest tests/test_emu.py -q -p no:cacheprovider --capture=sys  # ASan reports on fd 2

# The CPU kernels are compiled for the ISA torch uses on this CPU (setup.py FASTVAE_CPU_ISA), so
# an AVX-512 machine never runs the AVX2 code. This builds the next ISA down that this CPU can run
# (AVX2 below AVX-512, else the generic loops) CPU-only, in a copy of the tracked sources
# (build/other-isa), and runs the CPU kernel tests on it.
OTHER_ISA ?= $(shell $(PY) -c 'import torch; print("avx2" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "generic")')
test-other-isa: setup
	rm -rf build/other-isa && mkdir -p build/other-isa
	git ls-files -z | xargs -0 cp --parents -t build/other-isa
	cd build/other-isa && FASTVAE_CUDA=0 FASTVAE_EMU=0 FASTVAE_CPU_ISA=$(OTHER_ISA) $(abspath $(PY)) setup.py -q build_ext --inplace
	cd build/other-isa && PYTHONPATH=. $(abspath $(PY)) -c "import fastvae._extension as e; assert e.CPU_ISA == '$(OTHER_ISA)', e.CPU_ISA; print('CPU kernels:', e.CPU_ISA)"
	cd build/other-isa && PYTHONPATH=. $(abspath $(PY)) -m pytest tests/test_sampling.py tests/test_kl.py tests/test_likelihood.py tests/test_density.py tests/test_elbo.py tests/test_cpu_kernels.py tests/test_edges.py \
	  tests/test_kl_normal.py tests/test_iwae_op.py tests/test_discretized_logistic.py tests/test_categorical.py \
	  tests/test_continuous_bernoulli.py -q -p no:cacheprovider

# The extension prebuilt here for the GPU machine (benchmarks/README.md, "On a GPU machine"): its
# Python 3.12 and torch 2.11.0 (cu130), CUDA kernels for sm_90 (H200) only, CPU kernels for AVX2
# (its CPU is unknown), host debug info stripped. Built out of place in a copy of the tracked
# sources (build/gpu-kit-src, incremental: timestamps kept), so the in-place build stays as it is; build/gpu-kit is the tree
# `PYTHONPATH=build/gpu-kit` imports, carried to the device by benchmarks/gpu_check.sh's `run`.
# torch is installed without its ~3 GB of CUDA wheels: their headers (and, for the import test,
# libraries) are this .venv's cu13 wheels, linked in.
KIT_PYTHON ?= /root/.pyenv/versions/3.12.1/bin/python3
KIT_TORCH  ?= 2.11.0
KIT_VENV   := build/gpu-kit-venv
KIT_PY     := $(KIT_VENV)/bin/python
KIT_SRC    := build/gpu-kit-src
KIT_MAX_MIB ?= 40
$(KIT_VENV)/.installed: | setup
	rm -rf $(KIT_VENV)
	$(KIT_PYTHON) -m venv $(KIT_VENV)
	$(KIT_PY) -m pip install $(Q) --no-deps torch==$(KIT_TORCH)
	$(KIT_PY) -m pip install $(Q) "setuptools>=77,<82" wheel ninja numpy typing-extensions sympy filelock jinja2 networkx fsspec pytest
	ln -sfn "$$($(PY) -c 'import os, torch; print(os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia")))')" \
	  "$$($(KIT_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia"
	touch $@

gpu-kit: $(KIT_VENV)/.installed
	@start=$$(date +%s); \
	mkdir -p $(KIT_SRC) && find $(KIT_SRC) -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} + && \
	git ls-files -z | xargs -0 cp -p --parents -t $(KIT_SRC) && \
	(cd $(KIT_SRC) && FASTVAE_CUDA=1 FASTVAE_EMU=0 FASTVAE_CPU_ISA=avx2 TORCH_CUDA_ARCH_LIST=9.0 \
	  $(abspath $(KIT_PY)) setup.py $(Q) build_ext --inplace) && \
	rm -rf build/gpu-kit && mkdir -p build/gpu-kit && \
	cp -r $(KIT_SRC)/fastvae build/gpu-kit/ && rm -rf build/gpu-kit/fastvae/__pycache__ && \
	strip --strip-debug build/gpu-kit/fastvae/_C*.so && \
	(git rev-parse HEAD; git status --porcelain --untracked-files=no | sed 's/^/dirty: /') > build/gpu-kit/COMMIT && \
	bash $(KIT_SRC)/tools/source_hash.sh > build/gpu-kit/SOURCES && \
	(cd build && PYTHONPATH=gpu-kit $(abspath $(KIT_PY)) -c "import fastvae._extension as e; assert e.CUDA_BUILT and e.CPU_ISA == 'avx2', (e.CUDA_BUILT, e.CPU_ISA)") && \
	size=$$(du -sm build/gpu-kit | cut -f1) && \
	echo "gpu-kit: build/gpu-kit, $$size MiB, built in $$(( $$(date +%s) - start )) s (limit $(KIT_MAX_MIB) MiB)" && \
	test $$size -le $(KIT_MAX_MIB)

bench: build
	$(VENV)/bin/fastvae bench

# The tables of benchmarks/README.md and README.md, and benchmarks/results/INDEX.md, from the
# reports in benchmarks/results/ (standard library only: no build needed).
bench-tables:
	python3 benchmarks/tables.py

# Configure, build and run the C++ smoke test of the CMake (libtorch) build.
cmake-check: setup
	cmake $(if $(Q),--log-level=WARNING) -S . -B build/cmake -DCMAKE_PREFIX_PATH="$(TORCH_PREFIX)" \
	  -DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) -DCUDAToolkit_ROOT=$(CUDA_HOME) \
	  $(if $(wildcard $(NVIDIA_LIB)/libnvrtc.so.13),-DCUDA_nvrtc_LIBRARY=$(NVIDIA_LIB)/libnvrtc.so.13,)
	cmake --build build/cmake -j $(MAX_JOBS)
	LD_LIBRARY_PATH=$(NVIDIA_LIB):$$LD_LIBRARY_PATH ./build/cmake/fastvae_smoke

clean:
	rm -rf build fastvae/_C*.so *.egg-info
