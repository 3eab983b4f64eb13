"""Which dispatcher calls a region of code makes: :class:`DispatchCounter` lists them, to count the
kernel-launching ones and to find device->host syncs (``_local_scalar_dense`` …). Used by the
host-cost rows and by the tests that pin a fused step's calls.
"""
from __future__ import annotations

import collections
from typing import List, Set

from torch.utils._python_dispatch import TorchDispatchMode

#: Dispatcher calls that copy a value from the device to the host (each one a sync on a GPU).
SYNC_OPS = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal"})

# Calls that launch no kernel though the dispatcher does not mark them as views: bare allocations,
# metadata queries, and the seed gradient that ``loss.backward()`` itself makes (every loss pays it).
_NO_KERNEL = frozenset({
    "_unsafe_view", "_reshape_alias", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty",
    "new_empty_strided", "promote_types", "result_type", "size", "stride", "sym_size", "sym_stride",
    "sym_numel", "dim", "ones_like",
})


def op_base(name: str) -> str:
    """``"aten::mul.Tensor"`` -> ``"mul"``: the op's name without namespace and overload."""
    return name.split("::", 1)[-1].split(".", 1)[0]


class DispatchCounter(TorchDispatchMode):
    """Records every op that reaches the dispatcher inside the ``with`` block (also usable by
    calling ``__enter__``/``__exit__`` from callbacks, around a stretch of a training loop).

    ``calls`` lists them (``"aten::mul.Tensor"``, ``"fastvae::reparameterize_with_kl"`` …) and
    ``views`` holds those the dispatcher marks as views; the properties pick out the
    kernel-launching calls and the device->host syncs, or count calls by op name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[str] = []
        self.views: Set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func._schema.name) + ("." + func._overloadname if func._overloadname != "default" else "")
        self.calls.append(name)
        if func.is_view:
            self.views.add(name)
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> List[str]:
        """The calls by op name alone (``"mul"``, ``"reparameterize_with_kl"`` …)."""
        return [op_base(c) for c in self.calls]

    @property
    def counts(self) -> "collections.Counter[str]":
        """How many times each op (by name alone) was called."""
        return collections.Counter(self.ops)

    @property
    def kernel_calls(self) -> List[str]:
        """Calls that launch a kernel on a GPU: all but views, metadata and bare allocations."""
        return [c for c in self.calls if c not in self.views and op_base(c) not in _NO_KERNEL]

    @property
    def syncs(self) -> List[str]:
        """Calls that copy a device value to the host."""
        return [c for c in self.calls if op_base(c) in SYNC_OPS]
