// Emulation build: stands in for torch's <ATen/cuda/PhiloxUtils.cuh> (see csrc/emu/host.h).
#pragma once
#include "emu/host.h"
