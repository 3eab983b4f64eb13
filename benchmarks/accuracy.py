"""Correctness table: relative error of every fused op against the float64 reference.

For each op x dtype x size it draws fresh random inputs, rounds them to the dtype, and compares
the fused op (forward and every input gradient, with a random incoming gradient) with
``fastvae.reference`` evaluated in float64 on the same rounded inputs:
rel = ||out - ref|| / ||ref||, the worst over sizes 1, 7, 1025 and 100003 columns.
On CUDA it also compares eps drawn by the CUDA and CPU kernels from the same (seed, offset).

Long rows (``long_rows`` in the JSON): float32 row sums over 196 608 (3x256x256 images), 1e6 and
1e7 columns against float64, next to the error of torch's own float32 evaluation of the same
reference (its sums are cascaded) on the same inputs.

    python benchmarks/accuracy.py [--device cpu|cuda] [--out benchmarks/results/accuracy-cpu.json] [--quick]

--quick (benchmarks/gpu_check.sh's dry run): float32, columns 1, 7 and 1025 only, no long rows.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Callable, Dict, List

import torch

import fastvae
from fastvae import functional as F
from fastvae import reference as R

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COLS = (1, 7, 1025, 100003)
LONG_COLS = (196608, 1_000_000, 10_000_000)
LONG_OPS = {"standard_normal_log_density": 1, "kl_standard_normal": 2, "gaussian_log_likelihood": 3,
            "gaussian_log_density": 3}


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def _case(fused: Callable, ref: Callable, inputs: List[torch.Tensor]) -> Dict[str, float]:
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    leaves64 = [t.double().requires_grad_(t.is_floating_point()) for t in inputs]
    out, expect = fused(*leaves), ref(*leaves64)
    w = torch.randn_like(expect)
    out.backward(w.to(out.dtype))
    expect.backward(w)
    errors = {"forward": _rel(out, expect)}
    for i, (a, b) in enumerate(zip(leaves, leaves64)):
        if a.requires_grad:
            errors[f"grad{i}"] = _rel(a.grad, b.grad)
    return errors


def _ops(rows: int, cols: int, dtype: torch.dtype, device: str):
    def rnd(*shape, scale=1.0):
        return (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    shape = (rows, cols)
    yield "kl_standard_normal", F.kl_standard_normal, R.kl_standard_normal, [rnd(*shape), rnd(*shape)]
    yield ("bernoulli_log_likelihood", F.bernoulli_log_likelihood, R.bernoulli_log_likelihood,
           [rnd(*shape, scale=4.0), torch.rand(shape, device=device).to(dtype)])
    yield ("gaussian_log_likelihood[per_element]", F.gaussian_log_likelihood, R.gaussian_log_likelihood,
           [rnd(*shape), rnd(*shape), rnd(*shape)])
    yield ("gaussian_log_likelihood[per_dim]", F.gaussian_log_likelihood, R.gaussian_log_likelihood,
           [rnd(*shape), rnd(*shape), rnd(cols)])
    yield ("gaussian_log_likelihood[scalar]", F.gaussian_log_likelihood, R.gaussian_log_likelihood,
           [rnd(*shape), rnd(*shape), rnd()])
    yield "gaussian_log_density", F.gaussian_log_density, R.gaussian_log_density, [rnd(*shape), rnd(*shape), rnd(*shape)]
    yield ("gaussian_log_density[K=4]", F.gaussian_log_density, R.gaussian_log_density,
           [rnd(4, *shape), rnd(*shape), rnd(*shape)])
    yield "standard_normal_log_density", F.standard_normal_log_density, R.standard_normal_log_density, [rnd(*shape)]


def _sampler_errors(dtype: torch.dtype, device: str, with_kl: bool = False) -> Dict[str, float]:
    """Backward of the sampler (eps regenerated) against autograd of mu + sigma * eps; with_kl:
    reparameterize_with_kl, its KL output too, both outputs receiving a random gradient."""
    worst: Dict[str, float] = {}
    for cols in COLS:
        mu = torch.randn(3, cols, device=device).to(dtype).requires_grad_()
        lv = torch.randn(3, cols, device=device).to(dtype).requires_grad_()
        if with_kl:
            z, kl = F.reparameterize_with_kl(mu, lv, num_samples=2)
        else:
            z = F.reparameterize(mu, lv, num_samples=2)
        eps = (z.detach().double() - mu.detach().double()) / torch.exp(0.5 * lv.detach().double())
        mu64, lv64 = mu.detach().double().requires_grad_(), lv.detach().double().requires_grad_()
        pairs = [(z, R.reparameterize(mu64, lv64, eps=eps))]
        if with_kl:
            pairs.append((kl, R.kl_standard_normal(mu64, lv64)))
            worst["forward_kl"] = max(worst.get("forward_kl", 0.0), _rel(kl, pairs[1][1]))
        ws = [torch.randn_like(ref) for _, ref in pairs]
        sum((out * w.to(out.dtype)).sum() for (out, _), w in zip(pairs, ws)).backward()
        sum((ref * w).sum() for (_, ref), w in zip(pairs, ws)).backward()
        for key, err in (("grad_mu", _rel(mu.grad, mu64.grad)), ("grad_logvar", _rel(lv.grad, lv64.grad))):
            worst[key] = max(worst.get(key, 0.0), err)
    return worst


def _long_rows(device: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    """float32 forward of the row-sum ops on long N(0, 1) rows: fastvae's and torch's own
    float32 relative error against float64, per column count."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, n_in in LONG_OPS.items():
        for cols in LONG_COLS:
            rows = max(1, 4_000_000 // cols)
            inputs64 = [torch.randn(rows, cols, dtype=torch.float64).float().double().to(device) for _ in range(n_in)]
            ref = getattr(R, name)(*inputs64)
            inputs32 = [t.float() for t in inputs64]
            with torch.no_grad():
                fused, eager = getattr(F, name)(*inputs32), getattr(R, name)(*inputs32)
            out.setdefault(name, {})[str(cols)] = {"fastvae": _rel(fused, ref), "torch": _rel(eager, ref), "rows": rows}
    return out


def _eps_agreement() -> Dict[str, float]:
    """eps from the CUDA and the CPU kernel for the same (seed, offset)."""
    ops = torch.ops.fastvae
    out = {}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        mu = torch.zeros(1000, 1003, dtype=dtype)
        lv = torch.zeros_like(mu)  # sigma = 1, so z is eps itself
        state = torch.tensor([0x1234_5678_9ABC, 7], dtype=torch.int64)
        cpu = ops.reparameterize(mu, lv, 2, rng_state=state)[0]
        cuda = ops.reparameterize(mu.cuda(), lv.cuda(), 2, rng_state=state.cuda())[0].cpu()
        out[name] = {"max_abs_diff": (cpu - cuda).abs().max().item(), "rel": _rel(cuda, cpu)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    parser.add_argument("--quick", action="store_true", help="float32, columns 1, 7, 1025 only, no long rows")
    args = parser.parse_args(argv)
    cols_list = COLS[:3] if args.quick else COLS
    if args.device == "cuda" and not fastvae.cuda_available():
        parser.error("--device cuda needs a GPU and fastvae built with CUDA")
    torch.manual_seed(0)
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for dname, dtype in DTYPES.items():
        if args.quick and dname != "float32":
            continue
        for cols in cols_list:
            rows = 3 if cols > 5000 else 5
            for name, fused, ref, inputs in _ops(rows, cols, dtype, args.device):
                for key, err in _case(fused, ref, inputs).items():
                    cell = table.setdefault(name, {}).setdefault(dname, {})
                    cell[key] = max(cell.get(key, 0.0), err)
        table.setdefault("reparameterize (backward)", {})[dname] = _sampler_errors(dtype, args.device)
        table.setdefault("reparameterize_with_kl (KL, backward)", {})[dname] = _sampler_errors(
            dtype, args.device, with_kl=True)
    long_rows = {} if args.quick else _long_rows(args.device)
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "device_type": args.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sizes_cols": list(cols_list),
        "metric": "max over sizes of ||out - ref|| / ||ref|| against float64 fastvae.reference",
        "errors": table,
        "long_rows": long_rows,
        "long_rows_metric": "float32 forward on N(0, 1) rows, ||out - ref|| / ||ref|| against float64; "
                            "torch: the eager reference evaluated in float32 on the same inputs",
    }
    if args.device == "cuda":
        result["eps_cuda_vs_cpu"] = _eps_agreement()
    dtypes = [d for d in DTYPES if not args.quick or d == "float32"]
    print(f"| op | {' | '.join(dtypes)} |")
    print(f"| --- | {' | '.join('---' for _ in dtypes)} |")
    for name, row in table.items():
        cells = [f"{max(row[d].values()):.1e}" for d in dtypes]
        print(f"| {name} | {' | '.join(cells)} |")
    print("\nfloat32 long rows, relative error vs float64 (fastvae / torch's own float32):\n")
    print(f"| op | {' | '.join(f'{c:,} cols' for c in LONG_COLS)} |")
    print(f"| --- | {' | '.join('---' for _ in LONG_COLS)} |")
    for name, row in long_rows.items():
        cells = [f"{row[str(c)]['fastvae']:.1e} / {row[str(c)]['torch']:.1e}" for c in LONG_COLS]
        print(f"| {name} | {' | '.join(cells)} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
