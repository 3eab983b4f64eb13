"""The benchmark harness: the fused ops against their eager twins and ``torch.compile``.

Not part of the library: nothing in fastvae's core imports it (``fastvae bench`` loads it on
demand). One module per job:

==============  ======================================================================
``cases``       what is measured: one op's forward + backward at a size and dtype
``timing``      how: interleaved rounds, other-load retries, peak memory, copy bandwidth
``report``      the result rows, the environment, the JSON report and its printed lines
``train``       end-to-end Adam steps/s of the MLP VAE with each loss
``host``        host cost of the whole ELBO step at tiny batches, against the leanest eager loss
``dispatch``    :class:`DispatchCounter`, the dispatcher calls (and syncs) of a region
``plot``        the speed-up plot beside a saved report
``cli``         ``fastvae bench`` / ``python -m fastvae.bench``
==============  ======================================================================
"""
from __future__ import annotations

from .cli import add_arguments, command, main

__all__ = ["add_arguments", "command", "main"]
