"""Every lock resolves, from the public indexes alone, on every (platform, Python) pair the README supports: each
pin has a wheel there (a package that publishes no wheel at all, only a source distribution, is built by pip as on
any machine) and the pins agree with each other. uv resolves each lock for each pair with its own and pip's
machine settings off (`--no-config`, no PIP_*/UV_* variables); a pin without a wheel for a pair fails.

PyTorch's CPU index serves the CPU lock's Linux torch (torch==X+cpu). Where that index cannot be reached (this
project's build machines reach PyPI only), the pair is resolved with PyPI's torch==X in its place, which PyTorch
builds for the same platforms and Pythons, and the test says so in a warning."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from test_lock import REPO, TORCH_CPU_INDEX, read_lock

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.network

PYPI = "https://pypi.org/simple"
# uv's platform names; macOS 14 is the oldest that PyTorch's arm64 wheels support (the README says so)
PLATFORMS = {"linux-x86_64": "x86_64-manylinux_2_28", "linux-aarch64": "aarch64-manylinux_2_28",
             "macos-arm64": "aarch64-apple-darwin"}
LOCK_PLATFORMS = {"cpu": ("linux-x86_64", "linux-aarch64", "macos-arm64"), "cuda": ("linux-x86_64", "linux-aarch64")}
UV = Path(sys.executable).parent / "uv"


def supported_pythons() -> list[str]:
    """The Python minor versions pyproject.toml's requires-python admits (it has an upper bound)."""
    spec = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    return [f"3.{minor}" for minor in range(8, 20) if Version(f"3.{minor}") in spec]


@cache
def reachable(url: str) -> bool:
    host = re.match(r"https://([^/]+)", url)[1]
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        return False
    return True


@cache
def has_wheels(name: str, version: str) -> bool:
    """Whether PyPI has at least one wheel of name==version (else only a source distribution)."""
    request = urllib.request.Request(f"{PYPI}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    for attempt in range(4):  # a busy resolver drops a name lookup now and then
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                files = json.load(response)["files"]
            break
        except OSError:
            if attempt == 3:
                raise
            time.sleep(2 ** attempt)
    stem = re.compile(rf"^{re.escape(name.replace('-', '_'))}-{re.escape(version)}-", re.IGNORECASE)
    return any(f["filename"].endswith(".whl") and stem.match(f["filename"]) for f in files)


@cache
def wheel_packages(lock: Path) -> tuple[str, ...]:
    """The lock's packages that publish wheels (asked once per lock: one index page per package, eight at a time)."""
    pins, _, _ = read_lock(lock)
    with ThreadPoolExecutor(8) as pool:
        wheels = list(pool.map(lambda n: all(has_wheels(n, Version(v).public) for v, _ in pins[n]), pins))
    return tuple(sorted(n for n, has in zip(pins, wheels, strict=True) if has))


def clean_env(platform: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    if platform.startswith("macos"):
        env["MACOSX_DEPLOYMENT_TARGET"] = "14.0"
    return env


def resolve(lock: str, platform: str, python: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """uv's resolution of the lock for one pair, wheels required for every package that has any."""
    text = (REPO / f"requirements/{lock}.txt").read_text(encoding="utf-8")
    names = wheel_packages(REPO / f"requirements/{lock}.txt")
    args = ["--index-url", PYPI]
    if lock == "cpu" and platform.startswith("linux"):
        if reachable(TORCH_CPU_INDEX):
            args += ["--extra-index-url", TORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match"]
        else:
            warnings.warn(f"{TORCH_CPU_INDEX} unreachable: requirements/cpu.txt's torch+cpu checked as PyPI's torch",
                          stacklevel=2)
            text = re.sub(r"^(torch==\S+)\+cpu", r"\1", text, flags=re.MULTILINE)
    text = re.sub(r"^--extra-index-url .*$", "", text, flags=re.MULTILINE)
    reqs = tmp_path / f"{lock}-{platform}-{python}.txt"
    reqs.write_text(text, encoding="utf-8")
    return subprocess.run([str(UV), "pip", "compile", str(reqs), "--no-config", *args, "--python-platform",
                           PLATFORMS[platform], "--python-version", python, "--only-binary", ",".join(names),
                           "--no-header", "--no-annotate", "--quiet", "-o", str(reqs.with_suffix(".out"))],
                          capture_output=True, text=True, env=clean_env(platform), timeout=600)


def test_requires_python_is_bounded():
    assert supported_pythons()[-1] != "3.19", "requires-python needs an upper bound: the newest Python torch supports"


@pytest.mark.parametrize("lock", ["cpu", "cuda"])
def test_every_lock_resolves_on_every_supported_platform_and_python(lock, tmp_path):
    if not reachable(PYPI):
        pytest.fail(f"{PYPI} unreachable: the locks cannot be checked")
    pairs = [(platform, python) for platform in LOCK_PLATFORMS[lock] for python in supported_pythons()]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda pair: resolve(lock, *pair, tmp_path), pairs))
    failed = {f"{platform} Python {python}": proc.stderr.strip()[-600:]
              for (platform, python), proc in zip(pairs, results, strict=True) if proc.returncode}
    assert not failed, f"requirements/{lock}.txt does not resolve: {failed}"


def test_a_pin_without_a_wheel_for_a_pair_fails(tmp_path, monkeypatch):
    """The check above fails for a pin that has wheels, but none for one pair: numpy 1.26.4 has none for 3.13."""
    broken = tmp_path / "requirements"
    broken.mkdir()
    text = (REPO / "requirements/cuda.txt").read_text(encoding="utf-8")
    text = re.sub(r"^numpy==\S+( \\\n\s+--hash=\S+)*", "numpy==1.26.4", text, flags=re.MULTILINE)
    text = re.sub(r"^(\S+==\S+)( ;[^\\\n]*)?( \\\n\s+--hash=\S+)+", r"\1\2", text, flags=re.MULTILINE)
    (broken / "cuda.txt").write_text(text, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    proc = resolve("cuda", "linux-x86_64", "3.13", tmp_path)
    assert proc.returncode and "numpy" in proc.stderr, proc.stderr
