// Emulation build: stands in for torch's <ATen/cuda/CUDAContext.h> (see csrc/emu/host.h).
#pragma once
#include "emu/host.h"
