"""README.md and the pages it links to: the size limit, the Python snippets run, and the commands
and links they show exist.

- every ```python block of README.md runs (each on its own, in one fresh interpreter, CPU);
- every `fastvae SUBCOMMAND --flag` in a ```bash block of README.md, docs/ or benchmarks/README.md
  is a flag that SUBCOMMAND's --help lists; every `make TARGET` a target of the Makefile; every
  script path a file of the checkout;
- every relative link of those pages names a file of the checkout.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_LIMIT = 12 * 1024  # bytes
PAGES = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(path: Path, lang: str) -> List[str]:
    return [body for kind, body in FENCE.findall(path.read_text()) if kind == lang]


def commands(path: Path) -> List[str]:
    """The command lines of a page's bash blocks, comments cut off."""
    lines = []
    for body in blocks(path, "bash"):
        for line in body.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_readme_size():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move detail to docs/"


def test_readme_python_snippets_run(tmp_path):
    snippets = blocks(README, "python")
    assert len(snippets) >= 2, "README.md should show the drop-in loss and the VAE API"
    # Each snippet alone, in a fresh namespace, as a reader would paste it; one interpreter for all.
    driver = ("import sys\nfor i, code in enumerate(" + repr(snippets) + "):\n"
              "    exec(compile(code, f'README.md python block {i + 1}', 'exec'), {'__name__': '__main__'})\n"
              "print('snippets ok', len(" + repr(snippets) + "))\n")
    result = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**_env(), "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"snippets ok {len(snippets)}" in result.stdout


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@lru_cache(maxsize=None)
def cli_help(sub: str) -> str:
    """`fastvae SUB --help`, from the CLI's own entry point in this process (a fresh interpreter per
    subcommand cost a torch import each; tests/test_cli.py runs `python -m fastvae --help`)."""
    from fastvae.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main([sub, "--help"])
    assert exited.value.code in (0, None), f"fastvae {sub} --help exited with {exited.value.code}"
    return out.getvalue()


def fastvae_calls(line: str) -> List[Tuple[str, List[str]]]:
    """(subcommand, flags) of a `fastvae ...` or `python -m fastvae ...` command line."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    out = []
    for i, w in enumerate(words[:-1]):
        is_cli = (w == "fastvae" and (i == 0 or words[i - 1] in ("-m", "&&"))) or w.endswith("/bin/fastvae")
        if is_cli and not words[i + 1].startswith("-"):
            out.append((words[i + 1], [f.split("=")[0] for f in words[i + 2:] if f.startswith("--")]))
    return out


def make_targets() -> set:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE)}


def all_commands() -> List[Tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), line) for path in PAGES for line in commands(path)]


def test_pages_exist():
    for name in ("building", "design", "testing", "cli"):
        assert (ROOT / "docs" / f"{name}.md").is_file(), f"docs/{name}.md is missing"


def test_fastvae_flags_exist():
    calls = [(page, line, sub, flags) for page, line in all_commands() for sub, flags in fastvae_calls(line)]
    assert any(sub == "train" for _, _, sub, _ in calls), "README.md should show `fastvae train`"
    for page, line, sub, flags in calls:
        text = cli_help(sub)
        for flag in flags:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), \
                f"{page}: `{line}`: fastvae {sub} has no {flag}"


def test_make_targets_and_scripts_exist():
    targets = make_targets()
    for page, line in all_commands():
        for target in re.findall(r"(?:^|&&\s*)make\s+([\w-]+)", line):
            assert target in targets, f"{page}: `{line}`: no Makefile target {target!r}"
        for script in re.findall(r"(?:^|\s)((?:benchmarks|tools|tests)/[\w./-]+\.(?:py|sh))", line):
            assert (ROOT / script).is_file(), f"{page}: `{line}`: {script} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_exist(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
