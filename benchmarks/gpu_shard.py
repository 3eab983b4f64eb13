"""pytest plugin of benchmarks/gpu_check.sh: ``GPU_SHARD=k/n`` keeps the k-th of n shards of the
selected tests (after -m / -k), interleaved by test function (one parametrisation of each before
the second of any), so that the first tests of every shard cover every test function of every op
family before a time cap can cut it.

    GPU_SHARD=0/3 PYTHONPATH=benchmarks python -m pytest -p gpu_shard -m needs_cuda tests
"""
from __future__ import annotations

import os
from typing import Dict, List

import pytest


def shard(nodeids: List[str], k: int, n: int) -> List[int]:
    """Indices into ``nodeids`` of shard k of n: round-robin over test functions, then every n-th."""
    by_function: Dict[str, List[int]] = {}
    for i, nodeid in enumerate(nodeids):
        by_function.setdefault(nodeid.split("[")[0], []).append(i)
    order = []
    for depth in range(max((len(v) for v in by_function.values()), default=0)):
        order += [v[depth] for v in by_function.values() if depth < len(v)]
    return order[k::n]


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    spec = os.environ.get("GPU_SHARD", "")
    if not spec:
        return
    try:
        k, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise pytest.UsageError(f"GPU_SHARD must be k/n, got {spec!r}") from None
    if not 0 <= k < n:
        raise pytest.UsageError(f"GPU_SHARD must be k/n with 0 <= k < n, got {spec!r}")
    keep = shard([item.nodeid for item in items], k, n)
    kept = set(keep)
    config.hook.pytest_deselected(items=[item for i, item in enumerate(items) if i not in kept])
    items[:] = [items[i] for i in keep]
