"""The categorical family: `categorical_log_likelihood` (256 classes per subpixel), forward +
backward, fused against the eager loss users write (`F.cross_entropy(reduction="none")` summed
per image) and that loss under torch.compile: time and peak memory at B=64 3x32x32 and B=8
3x128x128, float32 and bf16 (decoder logits channels-last: the class dim innermost).

    python benchmarks/bench_categorical.py [--dtype float32 bfloat16] [--out r.json]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from fwd_bwd import run  # noqa: E402

from fastvae import functional as F  # noqa: E402
from fastvae import reference as R  # noqa: E402


def _case(b: int, hw: int):
    def make(dtype):
        # A decoder's conv output in channels-last: (B, 256 * 3, H, W) viewed as (B, 256, 3, H, W).
        logits = torch.randn(b, hw, hw, 3 * 256).mul(2).to(dtype).permute(0, 3, 1, 2)
        logits = logits.unflatten(1, (256, 3)).detach().requires_grad_(True)
        return logits, torch.randint(0, 256, (b, 3, hw, hw), dtype=torch.uint8)
    return f"B={b} 3x{hw}x{hw}", make


if __name__ == "__main__":
    impls = {"fused": F.categorical_log_likelihood, "eager": R.categorical_log_likelihood,
             "compile": R.categorical_log_likelihood}
    run("categorical", impls, [_case(64, 32), _case(8, 128)])
