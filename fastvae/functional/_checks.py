"""Argument checks and the ``(rows, cols)`` layout shared by the op families of
:mod:`fastvae.functional`. Every check raises ``ValueError`` naming the bad argument; the C++ ops
check again what they read (dtype, device, layout), so only what they cannot see is checked here.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Dict, Optional, Sequence, Tuple

import torch

FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def check_float(name: str, t: object) -> torch.Tensor:
    """``t`` itself when it is a floating-point tensor."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATS:
        raise ValueError(
            f"{name} must be a floating-point tensor (float64, float32, bfloat16 or float16), "
            f"got {t.dtype}"
        )
    return t


def check_logit_targets(x: object) -> torch.Tensor:
    """``x`` itself when it can be the targets of the Bernoulli-kind likelihoods: a float, bool or
    uint8 tensor (one-byte targets are read as they are by the kernels)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not (x.dtype in FLOATS or x.dtype in (torch.bool, torch.uint8)):
        raise ValueError(f"x must be float, bool or uint8, got {x.dtype}")
    return x


def check_devices(**tensors: torch.Tensor) -> None:
    """Every tensor on the first one's device."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_generator(generator: object, like: torch.Tensor, like_name: str) -> None:
    """``generator`` None or a ``torch.Generator`` of ``like``'s device type."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != like.device.type:
        raise ValueError(f"generator is on {generator.device} but {like_name} is on {like.device}")


def broadcast_shape(**tensors: torch.Tensor) -> torch.Size:
    """The shape the tensors broadcast to."""
    shapes = [t.shape for t in tensors.values()]
    if all(s == shapes[0] for s in shapes[1:]):  # the common case, without torch's slow path
        return shapes[0]
    try:
        return torch.broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in tensors.items())
        raise ValueError(f"shapes do not broadcast: {shapes}") from None


def check_nonempty(shape: Sequence[int], what: str) -> None:
    if math.prod(shape) == 0:
        raise ValueError(f"{what} is empty (shape {tuple(shape)}); fastvae ops need at least one element")


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t.dtype != dtype:  # torch.promote_types is a dispatcher call: only when needed
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_event_dims(value: Optional[int], ndim: int, name: str) -> int:
    """The number of trailing dims summed over: ``value``, by default all but the first."""
    if value is None:
        return max(ndim - 1, 1)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ndim:
        raise ValueError(f"event_dims must be an int in [1, {ndim}] for a {ndim}-D {name}, got {value!r}")
    return value


def real(name: str, value: object) -> float:
    """A real Python/NumPy scalar as a float (np.float32 included, bool refused)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{name} must be a real number, got {type(value).__name__}")


_DEVICE_MEMORY: Dict[str, int] = {}


@torch.compiler.assume_constant_result
def _device_memory(device: torch.device) -> int:
    """Total memory of ``device`` in bytes (physical RAM for the CPU): no allocation can exceed
    it. Looked up once per device; no device call, no sync."""
    key = str(device)
    if key not in _DEVICE_MEMORY:
        if device.type == "cuda":
            _DEVICE_MEMORY[key] = torch.cuda.get_device_properties(device).total_memory
        elif device.type == "cpu" and hasattr(os, "sysconf"):
            _DEVICE_MEMORY[key] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        else:  # meta and other devices: only overflow matters
            _DEVICE_MEMORY[key] = 2**63 - 1
    return _DEVICE_MEMORY[key]


def check_samples_fit(k: int, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
    """Refuses a draw of k samples of ``shape`` whose output could never be allocated (before
    asking the allocator for, say, 48 TB, and before the generator advances)."""
    elements = k * math.prod(shape)
    nbytes = elements * dtype.itemsize
    memory = _device_memory(device)
    if nbytes > memory:
        raise ValueError(
            f"num_samples={k} would draw {elements} elements of shape {tuple(shape)} "
            f"({nbytes / 2**30:.1f} GiB of {dtype}), more than {device} has ({memory / 2**30:.1f} GiB): "
            "draw fewer samples per call"
        )


# ---------------------------------------------------------------- layout
def as_rows(t: torch.Tensor, shape: torch.Size, event_ndim: int, full: bool = False) -> torch.Tensor:
    """``t`` (broadcastable to ``shape``) as a contiguous (rows, D) matrix for the kernels.

    D is the product of the last ``event_ndim`` dims of ``shape``. If ``t`` lacks only leading
    dims of ``shape`` it keeps its own, fewer rows, which the kernels broadcast without a copy;
    any other broadcast (or ``full=True``) expands it to every row.
    """
    lead, event = shape[: len(shape) - event_ndim], shape[len(shape) - event_ndim:]
    if t.shape == shape and t.is_contiguous():  # the common case: a free view
        return t if t.dim() == 2 and event_ndim == 1 else t.view(-1, math.prod(event))
    while t.dim() > event_ndim and t.shape[0] == 1:
        t = t.squeeze(0)
    if t.shape[max(t.dim() - event_ndim, 0):] != event:
        # Broadcast inside the event (a 0-dim or per-channel variance): widening costs D elements
        # when t has no leading dims, a full copy otherwise.
        t = t.expand(event) if t.dim() <= event_ndim else t.expand(shape)
    own_lead = t.shape[: t.dim() - event_ndim]
    if full or own_lead != lead[len(lead) - len(own_lead):]:
        t = t.expand(shape)
    return t.reshape(-1, math.prod(event)).contiguous()


def split_event(shape: torch.Size, event_ndim: int) -> Tuple[int, ...]:
    """The leading (per-row) dims of ``shape``: the shape of a row output."""
    return tuple(shape[: len(shape) - event_ndim])


# ---------------------------------------------------------------- the ELBO ops' KL operands
def kl_operands(
    mu: Optional[torch.Tensor], logvar: Optional[torch.Tensor], kl: Optional[torch.Tensor],
    dtype: torch.dtype, rows: int, batch: Tuple[int, ...],
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(kl, mu, logvar) as the ELBO ops take them: the given ``kl`` (shape ``batch``) as a
    contiguous (rows,) tensor of the accumulation dtype of ``dtype`` and no mu / logvar, or no kl
    and mu / logvar (broadcast to each other, cast to ``dtype``) as contiguous (rows, Z) matrices."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if kl is not None:
        if not isinstance(kl, torch.Tensor):
            raise ValueError(f"kl must be a torch.Tensor, got {type(kl).__name__}")
        if kl.shape != batch:
            raise ValueError(
                f"recon gives per-example terms of shape {tuple(batch)} but kl has shape {tuple(kl.shape)}: "
                f"the batch dims must agree"
            )
        if kl.dtype == acc and kl.dim() == 1 and kl.is_contiguous():
            kl2 = kl
        else:
            kl2 = cast(check_float("kl", kl), acc).reshape(rows).contiguous()
        mu2 = lv2 = None
    else:
        kl2 = None
        if not isinstance(mu, torch.Tensor) or not isinstance(logvar, torch.Tensor):
            raise ValueError("mu and logvar must be torch.Tensors when kl is not given")
        if mu.shape == logvar.shape and mu.dim() == 2 and mu.dtype == dtype == logvar.dtype and (
            mu.is_contiguous() and logvar.is_contiguous()
        ):
            mu2, lv2 = mu, logvar
        else:
            check_float("mu", mu)
            check_float("logvar", logvar)
            latent = broadcast_shape(mu=mu, logvar=logvar)
            if len(latent) == 0:
                raise ValueError("mu and logvar need a latent dim (at least 1-D)")
            mu2 = cast(mu, dtype).expand(latent).contiguous()
            lv2 = cast(logvar, dtype).expand(latent).contiguous()
        if mu2.shape[:-1] != batch:
            raise ValueError(
                f"recon gives per-example terms of shape {tuple(batch)} but mu/logvar give "
                f"{tuple(mu2.shape[:-1])}: the batch dims must agree"
            )
        if mu2.dim() != 2:
            mu2, lv2 = mu2.reshape(rows, -1), lv2.reshape(rows, -1)
    return kl2, mu2, lv2
