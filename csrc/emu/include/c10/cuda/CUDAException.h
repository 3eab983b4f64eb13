// Emulation build: stands in for torch's <c10/cuda/CUDAException.h> (see csrc/emu/host.h).
#pragma once
#include "emu/host.h"
