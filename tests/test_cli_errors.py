"""The command line under bad input, unreadable checkpoints and killed runs (issue 12).

Each case runs the real ``fastvae`` console script in a subprocess (with this checkout first on
PYTHONPATH) and checks the exit status, a one-line ``error: ...`` naming what is wrong, and the
absence of a traceback. Cases that need no files run several processes at a time.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Sequence

import pytest
import torch

import fastvae
from fastvae import cli
from fastvae.training import CHECKPOINT_NAME, METRICS_NAME, CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# The console script next to this interpreter; `python -m fastvae` runs the same main().
SCRIPT = Path(sys.executable).with_name("fastvae")
TINY = ["--hidden", "8", "--no-progress", "--device", "cpu", "--eval-samples", "0"]


def _command() -> List[str]:
    return [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "fastvae"]


def _run(args: Sequence[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "FASTVAE_DEBUG"}
    full_env.update(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                    OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([*_command(), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=300)


def _run_all(cases: Sequence[Sequence[str]], cwd: Path) -> List[subprocess.CompletedProcess]:
    """Run each case (a leading "--debug-env" sets FASTVAE_DEBUG=1 instead of a flag); mostly
    interpreter start-up, so a few at a time even on two cores."""
    def one(argv: Sequence[str]) -> subprocess.CompletedProcess:
        if argv and argv[0] == "--debug-env":
            return _run(argv[1:], cwd, env={"FASTVAE_DEBUG": "1"})
        return _run(argv, cwd)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, cases))


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if "error:" in l]
    assert len(lines) == 1 and lines[0].startswith("fastvae "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


# ---------------------------------------------------------------------- version and --debug
def test_version_says_whether_cuda_kernels_are_built(tmp_path):
    proc = _run(["--version"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.strip()
    assert text.startswith(f"fastvae {fastvae.__version__} ") and f"torch {torch.__version__}" in text
    assert ("CUDA kernels built" if fastvae.CUDA_BUILT else "CUDA kernels not built") in text
    cpu = re.search(r"CPU kernels (\w+), (\d+) of (\d+) threads", text)
    assert cpu and cpu[1] == fastvae._extension.CPU_ISA and cpu[2] == cpu[3], text  # every thread used


def test_debug_flag_and_environment_show_the_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"")
    plain, flag, env = _run_all([["sample", str(bad)], ["sample", str(bad), "--debug"],
                                 ["--debug-env", "sample", str(bad)]], tmp_path)
    _assert_one_line_error(plain, "the file is empty")
    for proc in (flag, env):
        assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr
    # --debug before the command name, in-process: the exception itself comes through.
    with pytest.raises(CheckpointError, match="the file is empty"):
        cli.main(["--debug", "sample", str(bad)])


# ---------------------------------------------------------------------- flags
def test_size_and_seed_flags_are_checked_before_anything_is_loaded(tmp_path):
    # The data directory does not exist and the checkpoint is missing: a flag checked only
    # after loading would report those instead of itself.
    out = tmp_path / "never"
    data = ["--data", "mnist", "--data-dir", str(tmp_path / "no-mnist"), "--out", str(out), "--no-progress"]
    missing = str(tmp_path / "missing.pt")
    cases = {
        ("train", "--latent-dim", "-3", *data): ("--latent-dim", "-3"),
        ("train", "--num-images", "0", *data): ("--num-images", "0"),
        ("train", "--seed", "99999999999999999999", *data): ("--seed", "2**63 - 1"),
        ("eval", missing, "--num-samples", "0"): ("--num-samples",),
    }
    for proc, needles in zip(_run_all(list(cases), tmp_path), cases.values()):
        _assert_one_line_error(proc, *needles)
    assert not out.exists()  # nothing was trained or written


@pytest.mark.parametrize("argv,needle", [
    (["train", "--epochs", "0"], "--epochs"), (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "0"], "--lr"), (["train", "--lr", "nan"], "--lr"), (["train", "--beta", "-1"], "--beta"),
    (["train", "--free-bits", "-0.5"], "--free-bits"), (["train", "--warmup", "-1"], "--warmup"),
    (["train", "--max-steps", "0"], "--max-steps"), (["train", "--eval-samples", "-1"], "--eval-samples"),
    (["train", "--eval-batch-size", "0"], "--eval-batch-size"), (["train", "--log-every", "-2"], "--log-every"),
    (["train", "--checkpoint-every", "-1"], "--checkpoint-every"), (["train", "--obs-logvar", "inf"], "--obs-logvar"),
    (["train", "--hidden", "8,0"], "--hidden"), (["train", "--channels", "x"], "--channels"),
    (["train", "--seed", "-1"], "--seed"), (["train", "--seed", str(2**63)], "--seed"),
    (["train", "--data", "digits.csv"], "--data"), (["train", "--device", "tpu"], "--device"),
    (["train", "--obs-var", "scalar"], "--obs-var"),
    (["sample", "CKPT", "--num", "0"], "--num"), (["sample", "CKPT", "--nrow", "0"], "--nrow"),
    (["eval", "CKPT", "--max-examples", "0"], "--max-examples"), (["eval", "CKPT", "--batch-size", "-1"], "--batch-size"),
    (["eval", "CKPT", "--seed", str(2**64)], "--seed"), (["eval", "CKPT", "--data", "x.txt"], "--data"),
])
def test_every_flag_is_checked_up_front(tmp_path, capsys, argv, needle):
    # In-process (the same main() the console script runs), for speed: the table is long.
    argv = [str(tmp_path / "missing.pt") if a == "CKPT" else a for a in argv]
    extra = ["--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")] if argv[0] == "train" else []
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and "error:" in err, err
    assert "not found" not in err and not (tmp_path / "o").exists()


def test_a_cuda_device_this_machine_lacks(tmp_path, capsys):
    if torch.cuda.is_available():
        wanted, needle = [f"cuda:{torch.cuda.device_count() + 3}"], "CUDA device(s)"
    else:
        wanted, needle = ["cuda", "cuda:5"], "CUDA is not available"
    missing = str(tmp_path / "missing.pt")
    cases = []
    for device in wanted:
        cases += [["train", "--device", device, "--out", str(tmp_path / "o"), "--no-progress"],
                  ["sample", missing, "--device", device], ["eval", missing, "--device", device]]
    # Every command once through the console script, every case in-process.
    procs = _run_all([cases[3 * (i % len(wanted)) + i] for i in range(3)], tmp_path)
    for proc in procs:
        _assert_one_line_error(proc, "--device cuda", needle)
    for case in cases:
        with pytest.raises(SystemExit) as exc:
            cli.main(case)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"--device {case[case.index('--device') + 1]}" in err and needle in err, err


# ---------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-epoch run on the bundled digits with a tiny network."""
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "--epochs", "1", "--no-plots", "--out", str(out), *TINY]) == 0
    return out


def _broken_checkpoints(good: Path, where: Path) -> dict:
    """name -> (path, what the error must say)."""
    raw = good.read_bytes()
    state = torch.load(good, weights_only=True)
    cases = {}

    def write(name: str, payload: bytes, why: str) -> None:
        path = where / f"{name}.pt"
        path.write_bytes(payload)
        cases[name] = (path, why)

    def save(name: str, changed: dict, why: str) -> None:
        path = where / f"{name}.pt"
        torch.save(changed, path)
        cases[name] = (path, why)

    write("empty", b"", "the file is empty")
    write("truncated", raw[: len(raw) // 2], "truncated")
    write("random", torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes(), "not a torch.save archive")
    save("config_less", {k: v for k, v in state.items() if k != "model_config"}, "no 'model_config' entry")
    wider = {**state, "model_config": {**state["model_config"], "hidden": [9]}}
    save("mismatched", wider, "'model_state' does not fit the model 'model_config' describes: 'encoder.1.weight' "
                               "is (8, 64), the model needs (9, 64)")
    save("future_version", {**state, "version": 99}, "format version 99")
    save("foreign", {"model": state["model_state"]}, "format marker")
    return cases


def test_unreadable_checkpoints_give_one_line_errors(trained, tmp_path, capsys):
    cases = _broken_checkpoints(trained / CHECKPOINT_NAME, tmp_path)
    commands = (lambda p: ["eval", str(p), "--device", "cpu", "--no-progress"], lambda p: ["sample", str(p)],
                lambda p: ["train", "--resume", str(p), "--no-progress"])
    # Each kind of damage once through the console script (the commands taking turns) ...
    runs = [commands[i % 3](path) for i, (path, _) in enumerate(cases.values())]
    for proc, (path, why) in zip(_run_all(runs, tmp_path), cases.values()):
        _assert_one_line_error(proc, f"{path} is not a readable fastvae checkpoint (", why)
    # ... and every kind with every command in-process.
    for path, why in cases.values():
        for command in commands:
            with pytest.raises(SystemExit) as exc:
                cli.main(command(path))
            err = capsys.readouterr().err
            assert exc.value.code == 2 and f"{path} is not a readable fastvae checkpoint (" in err and why in err, err
    assert not (tmp_path / "samples.png").exists()


# ---------------------------------------------------------------------- metrics log
def test_resume_after_a_torn_metrics_line(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with open(run / METRICS_NAME, "a") as f:
        f.write('{"kind": "epoch", "epoch": 2, "st')  # what a kill during an append leaves
    proc = _run(["train", "--resume", str(run), "--epochs", "2", "--no-progress", "--plots"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "torn last line" in proc.stderr
    lines = (run / METRICS_NAME).read_text().splitlines()
    records = [json.loads(l) for l in lines]  # every line whole again
    assert [(r["kind"], r["epoch"]) for r in records] == [("epoch", 1), ("epoch", 2)]
    for name in ("curve.png", "samples.png", "reconstructions.png"):
        assert (run / name).is_file(), name


def test_resume_cuts_the_log_back_to_the_checkpoint(trained, tmp_path, recwarn):
    # A run killed after its epoch-2 record but before the checkpoint that follows it: the log
    # is that of a finished second epoch, the checkpoint that of the first.
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    first = (run / CHECKPOINT_NAME).read_bytes()
    assert cli.main(["train", "--resume", str(run), "--epochs", "2", "--no-plots", *TINY[2:3]]) == 0
    once = [json.loads(l) for l in (run / METRICS_NAME).read_text().splitlines()]
    (run / CHECKPOINT_NAME).write_bytes(first)

    assert cli.main(["train", "--resume", str(run), "--epochs", "2", "--no-plots", "--no-progress"]) == 0
    again = [json.loads(l) for l in (run / METRICS_NAME).read_text().splitlines()]
    step = load_checkpoint(trained)["step"]
    assert [r["epoch"] for r in again] == [1, 2]  # not [1, 2, 2]
    # The exact resume redoes the same epoch: the same loss, logged once.
    assert again[1]["train_loss"] == once[1]["train_loss"] and again[1]["step"] == 2 * step
    assert any(f"dropped 1 record(s) after step {step}" in str(w.message) for w in recwarn)


def test_an_idx_file_without_images_is_named(tmp_path):
    import gzip
    import struct

    data = tmp_path / "mnist"
    data.mkdir()
    for name, magic, dims in (("t10k-images-idx3-ubyte", 0x803, (0, 28, 28)), ("t10k-labels-idx1-ubyte", 0x801, (0,))):
        with gzip.open(data / f"{name}.gz", "wb") as f:
            f.write(struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims))
    proc = _run(["train", "--data", "mnist", "--data-dir", str(data), "--out", str(tmp_path / "o"), *TINY], tmp_path)
    _assert_one_line_error(proc, f"{data / 't10k-images-idx3-ubyte.gz'}: holds no images")
