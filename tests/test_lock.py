"""The pinned environment agrees with pyproject.toml: requirements/cpu.txt and requirements/cuda.txt (made by
scripts/lock.sh) pin every requirement of pyproject.toml (dependencies and the workflow and test extras) to one
exact version its range allows, the CPU lock has torch's CPU build and no CUDA package, the two locks differ only
by torch's build and its CUDA packages, and envs/cocoracle.yaml pins what requirements/cpu.txt pins.
`lock_problems` reads the files and lists every disagreement; the tests below also run it on broken copies, so each
check is seen to fail. Fix a failure with scripts/lock.sh."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
FILES = {"pyproject": "pyproject.toml", "cpu": "requirements/cpu.txt", "cuda": "requirements/cuda.txt",
         "conda": "envs/cocoracle.yaml"}
EXTRAS = ("workflow", "test")
# what the locks are made for (scripts/lock.sh: --python-version 3.11 --python-platform x86_64-manylinux_2_28)
TARGET = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.0",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
CUDA_PACKAGE = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
NOT_CUDA = {"nvidia-ml-py"}  # dvclive's NVML bindings: pure Python, no CUDA library (dvclive requires it)
OPTIONS = ("--find-links", "-f", "--index-url", "-i", "--extra-index-url")  # allowed in a lock besides pins
HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


def pyproject_requirements(path: Path) -> list[Requirement]:
    """pyproject.toml's dependencies and its workflow and test extras that apply to the locks' target."""
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    reqs = [*project["dependencies"], *(r for extra in EXTRAS for r in project["optional-dependencies"][extra])]
    reqs = [Requirement(r) for r in reqs]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET)]


def read_lock(path: Path) -> tuple[dict[str, str], list[str]]:
    """A requirements lock: its pins (canonical name -> version) and its problems (lines that are not an exact
    pin, a duplicate, hashes on some pins only)."""
    pins: dict[str, str] = {}
    problems: list[str] = []
    hashed: dict[str, bool] = {}
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines() + [""]:
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical, line = "", (logical + line).strip()
        if not line:
            continue
        if line.startswith("-"):
            if line.split()[0].split("=")[0] not in OPTIONS:
                problems.append(f"{path}: not an exact pin: {line}")
            continue
        req_text, *opts = re.split(r"\s+(?=--)", line)
        try:
            req = Requirement(req_text)
        except InvalidRequirement as e:
            problems.append(f"{path}: not a requirement: {line} ({e})")
            continue
        specs = list(req.specifier)
        if (req.url or req.marker or req.extras or len(specs) != 1 or specs[0].operator != "=="
                or "*" in specs[0].version):
            problems.append(f"{path}: not an exact pin: {req_text}")
            continue
        if any(not HASH.match(o) for o in opts):
            problems.append(f"{path}: unexpected option on {req_text}: {' '.join(opts)}")
        name = canonicalize_name(req.name)
        if name in pins:
            problems.append(f"{path}: {name} pinned twice")
        pins[name] = specs[0].version
        hashed[name] = bool(opts)
    if any(hashed.values()) and not all(hashed.values()):  # pip's hash-checking mode needs a hash on every pin
        problems.append(f"{path}: pins without a hash: {sorted(n for n, h in hashed.items() if not h)}")
    return pins, problems


def read_conda_pins(path: Path) -> tuple[dict[str, str], list[str]]:
    """envs/cocoracle.yaml: the name==version entries of its pip list, and its problems."""
    deps = yaml.safe_load(path.read_text(encoding="utf-8"))["dependencies"]
    problems = [] if "python=3.11" in deps else [f"{path}: no python=3.11 (the locks are for Python 3.11)"]
    pip = [entry["pip"] for entry in deps if isinstance(entry, dict) and "pip" in entry]
    pins: dict[str, str] = {}
    for entry in pip[0] if pip else []:
        if not entry.startswith("-"):
            req = Requirement(entry)
            specs = list(req.specifier)
            if len(specs) != 1 or specs[0].operator != "==":
                problems.append(f"{path}: not an exact pin: {entry}")
            else:
                pins[canonicalize_name(req.name)] = specs[0].version
    return pins, problems


def lock_problems(root: Path) -> list[str]:
    """Every way in which the locks and the conda env under root disagree with its pyproject.toml (empty: none)."""
    paths = {key: root / rel for key, rel in FILES.items()}
    problems: list[str] = []
    locks = {}
    for key in ("cpu", "cuda"):
        locks[key], found = read_lock(paths[key])
        problems += found
        header = paths[key].read_text(encoding="utf-8").splitlines()[:2]
        if not (len(header) == 2 and "uv pip compile pyproject.toml" in header[1]
                and header[1].rstrip().endswith(f"-o {FILES[key]}")):
            problems.append(f"{FILES[key]}: its header does not give the uv pip compile command that writes it")
    for req in pyproject_requirements(paths["pyproject"]):
        name = canonicalize_name(req.name)
        for key, pins in locks.items():
            if name not in pins:
                problems.append(f"{FILES[key]}: {req} of pyproject.toml is not pinned")
            elif not req.specifier.contains(Version(pins[name]), prereleases=True):
                problems.append(f"{FILES[key]}: {name}=={pins[name]} does not satisfy pyproject.toml's {req}")
    cpu, cuda = locks["cpu"], locks["cuda"]
    if bad := sorted(n for n in cpu if CUDA_PACKAGE.match(n) and n not in NOT_CUDA):
        problems.append(f"{FILES['cpu']}: CUDA packages in the CPU lock: {bad}")
    if "torch" in cpu and Version(cpu["torch"]).local != "cpu":
        problems.append(f"{FILES['cpu']}: torch=={cpu['torch']} is not a +cpu build")
    if "torch" in cuda and Version(cuda["torch"]).local is not None:
        problems.append(f"{FILES['cuda']}: torch=={cuda['torch']} is not PyPI's (CUDA) build")
    if not any(CUDA_PACKAGE.match(n) and n not in NOT_CUDA for n in cuda):
        problems.append(f"{FILES['cuda']}: no CUDA package (nvidia-*, triton): not a CUDA lock")
    if "torch" in cpu and "torch" in cuda and Version(cpu["torch"]).public != Version(cuda["torch"]).public:
        problems.append(f"torch differs between the locks beyond its build: {cpu['torch']} vs {cuda['torch']}")
    differ = sorted(f"{n}: {cpu[n]} vs {cuda[n]}" for n in set(cpu) & set(cuda) - {"torch"} if cpu[n] != cuda[n])
    if differ:
        problems.append(f"the two locks pin different versions: {differ}")
    if only := sorted(n for n in set(cpu) ^ set(cuda) if not (n in cuda and CUDA_PACKAGE.match(n))):
        problems.append(f"packages in one lock only that are not torch's CUDA packages: {only}")
    conda, found = read_conda_pins(paths["conda"])
    problems += found
    if conda != cpu:
        diff = sorted(f"{n}: conda {conda.get(n)} vs lock {cpu.get(n)}"
                      for n in set(conda) | set(cpu) if conda.get(n) != cpu.get(n))
        problems.append(f"{FILES['conda']} does not pin what {FILES['cpu']} pins: {diff}")
    return problems


def test_locks_agree_with_pyproject():
    assert lock_problems(REPO) == []


class Copy:
    """A copy of the four files under root, to break."""

    def __init__(self, root: Path):
        self.root = root
        for rel in FILES.values():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / rel, root / rel)

    def edit(self, key: str, pattern: str, new: str, count: int = 0) -> None:
        """re.sub in one file; the pattern must match."""
        path = self.root / FILES[key]
        text, n = re.subn(pattern, new, path.read_text(encoding="utf-8"), count=count, flags=re.MULTILINE)
        assert n, (key, pattern)
        path.write_text(text, encoding="utf-8")

    def replace_pin(self, key: str, name: str, new: str) -> None:
        """Replace a package's entry in a lock (its pin, hashes and comments) by the lines new."""
        self.edit(key, rf"^{re.escape(name)}==.*(\n[ \t].*)*$", new.replace("\\", "\\\\"))

    def pin(self, key: str, name: str) -> str:
        return f"{name}=={read_lock(self.root / FILES[key])[0][name]}"

    def problems(self, *needles: str) -> list[str]:
        """lock_problems of the copy: not empty, and each needle is in one of them."""
        problems = lock_problems(self.root)
        assert problems, "a broken copy passed"
        for needle in needles:
            assert any(needle in p for p in problems), (needle, problems)
        return problems


@pytest.fixture
def copy(tmp_path):
    copy = Copy(tmp_path)
    assert lock_problems(tmp_path) == []
    return copy


def test_a_range_the_pins_do_not_satisfy_is_reported(copy):
    version = read_lock(REPO / FILES["cpu"])[0]["transformers"]
    copy.edit("pyproject", r'"transformers[<>=!~][^"]*"', f'"transformers>{version},<99"')
    copy.problems(f"requirements/cpu.txt: transformers=={version} does not satisfy",
                  f"requirements/cuda.txt: transformers=={version} does not satisfy")


def test_a_new_requirement_not_in_the_locks_is_reported(copy):
    copy.edit("pyproject", r'^test = \[', 'test = ["mypy>=1", ')
    copy.problems("requirements/cpu.txt: mypy>=1 of pyproject.toml is not pinned",
                  "requirements/cuda.txt: mypy>=1 of pyproject.toml is not pinned")


def test_a_pin_missing_from_one_lock_is_reported(copy):
    copy.replace_pin("cuda", "snakefmt", "")
    copy.problems("requirements/cuda.txt: snakefmt", "packages in one lock only that are not torch's CUDA packages")


def test_a_line_that_is_not_an_exact_pin_is_reported(copy):
    copy.replace_pin("cpu", "ruff", "ruff>=0.17")
    copy.replace_pin("cuda", "pyyaml", "-e ../pyyaml\npyyaml==6.*")
    copy.problems("requirements/cpu.txt: not an exact pin: ruff>=0.17", "requirements/cuda.txt: not an exact pin: -e",
                  "requirements/cuda.txt: not an exact pin: pyyaml==6.*")


def test_cuda_packages_or_a_non_cpu_torch_in_the_cpu_lock_are_reported(copy):
    copy.replace_pin("cpu", "torch", copy.pin("cpu", "torch").removesuffix("+cpu"))
    copy.replace_pin("cpu", "tqdm", copy.pin("cpu", "tqdm") + "\nnvidia-cublas==13.1.1.3\ntriton==3.7.1")
    copy.problems("is not a +cpu build", "CUDA packages in the CPU lock: ['nvidia-cublas', 'triton']")


def test_a_cuda_lock_without_cuda_torch_is_reported(copy):
    for name in read_lock(REPO / FILES["cuda"])[0]:
        if CUDA_PACKAGE.match(name) and name not in NOT_CUDA:
            copy.replace_pin("cuda", name, "")
    copy.replace_pin("cuda", "torch", copy.pin("cpu", "torch"))
    copy.problems("is not PyPI's (CUDA) build", "no CUDA package")


def test_locks_that_pin_different_versions_are_reported(copy):
    copy.replace_pin("cuda", "numpy", "numpy==1.26.0")
    copy.problems("the two locks pin different versions: ['numpy: ")


def test_some_pins_without_hashes_are_reported(copy):
    if "--hash=" not in (REPO / FILES["cpu"]).read_text(encoding="utf-8"):
        pytest.skip("the locks have no hashes")
    copy.replace_pin("cpu", "tqdm", copy.pin("cpu", "tqdm"))
    copy.problems("requirements/cpu.txt: pins without a hash: ['tqdm']")


def test_a_conda_env_that_differs_from_the_cpu_lock_is_reported(copy):
    copy.edit("conda", rf"- {re.escape(copy.pin('cpu', 'pandas'))}$", "- pandas==2.1.0")
    copy.edit("conda", r"- python=3\.11$", "- python=3.12")
    copy.problems("envs/cocoracle.yaml does not pin what requirements/cpu.txt pins: ['pandas: conda 2.1.0",
                  "no python=3.11")


def test_a_header_without_the_command_is_reported(copy):
    copy.edit("cpu", r"-o requirements/cpu\.txt$", "-o cpu.txt", count=1)
    copy.problems("requirements/cpu.txt: its header does not give")
