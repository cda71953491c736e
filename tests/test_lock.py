"""The pinned environment agrees with pyproject.toml: requirements/cpu.txt and requirements/cuda.txt (made by
scripts/lock.sh, universal: one file for every platform and Python) pin every requirement of pyproject.toml
(dependencies and the workflow and test extras) to one exact version its range allows; the CPU lock has torch's
CPU build on Linux from PyTorch's CPU index, which it names, and no CUDA package; the CUDA lock hashes every pin;
the two differ only by torch's build and its CUDA packages; neither names a folder of this machine; and
envs/cocoracle.yaml is what scripts/conda_env.py writes from the CPU lock: conda-forge's pytorch at the lock's
version, the lock's other pins by pip, no machine path.
`lock_problems` reads the files and lists every disagreement; the tests below also run it on broken copies, so each
check is seen to fail. Fix a failure with scripts/lock.sh."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import load_script

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
FILES = {"pyproject": "pyproject.toml", "cpu": "requirements/cpu.txt", "cuda": "requirements/cuda.txt",
         "conda": "envs/cocoracle.yaml"}
EXTRAS = ("workflow", "test")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# the platforms the README names, as marker environments: which torch build each lock gives them
PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    "linux-aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
}
CUDA_PACKAGE = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
NOT_CUDA = {"nvidia-ml-py"}  # dvclive's NVML bindings: pure Python, no CUDA library (dvclive requires it)
OPTIONS = ("--find-links", "-f", "--index-url", "-i", "--extra-index-url")  # allowed in a lock besides pins
HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")
Pins = dict[str, list[tuple[str, Requirement]]]  # canonical name -> (version, requirement) per marker


def marker_environment(platform: str, python: str = "3.11") -> dict[str, str]:
    return {**default_environment(), **PLATFORMS[platform], "python_version": python,
            "python_full_version": f"{python}.0", "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython"}


def pyproject_requirements(path: Path) -> list[Requirement]:
    """pyproject.toml's dependencies and its workflow and test extras."""
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    return [Requirement(r) for r in [*project["dependencies"],
                                     *(r for extra in EXTRAS for r in project["optional-dependencies"][extra])]]


def read_lock(path: Path) -> tuple[Pins, list[str], list[str]]:
    """A requirements lock: its pins, its options (index lines) and its problems (lines that are not an exact pin,
    a package pinned twice under one marker, hashes on some pins only)."""
    pins: Pins = {}
    options: list[str] = []
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
            options.append(line)
            continue
        req_text, *opts = re.split(r"\s+(?=--)", line)
        try:
            req = Requirement(req_text)
        except InvalidRequirement as e:
            problems.append(f"{path}: not a requirement: {line} ({e})")
            continue
        specs = list(req.specifier)
        if req.url or req.extras or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"{path}: not an exact pin: {req_text}")
            continue
        if any(not HASH.match(o) for o in opts):
            problems.append(f"{path}: unexpected option on {req_text}: {' '.join(opts)}")
        name = canonicalize_name(req.name)
        if any(str(other.marker) == str(req.marker) for _, other in pins.get(name, [])):
            problems.append(f"{path}: {name} pinned twice")
        pins.setdefault(name, []).append((specs[0].version, req))
        hashed[name] = bool(opts)
    if any(hashed.values()) and not all(hashed.values()):  # pip's hash-checking mode needs a hash on every pin
        problems.append(f"{path}: pins without a hash: {sorted(n for n, h in hashed.items() if not h)}")
    return pins, options, problems


def versions(pins: Pins) -> dict[str, str]:
    """name -> its one version (several, joined, where markers pin several)."""
    return {name: " | ".join(sorted({v for v, _ in entries})) for name, entries in pins.items()}


def torch_for(pins: Pins, platform: str) -> list[str]:
    """The torch versions the lock installs on a platform (one, when it is right)."""
    env = marker_environment(platform)
    return [v for v, req in pins.get("torch", []) if req.marker is None or req.marker.evaluate(env)]


def conda_problems(root: Path, cpu: Pins) -> list[str]:
    """envs/cocoracle.yaml: what scripts/conda_env.py writes from the CPU lock, with no machine path."""
    path, problems = root / FILES["conda"], []
    conda_env = load_script("conda_env")
    requires_python = tomllib.loads((root / FILES["pyproject"]).read_text(encoding="utf-8"))["project"][
        "requires-python"]
    text = path.read_text(encoding="utf-8")
    if text != conda_env.render((root / FILES["cpu"]).read_text(encoding="utf-8"), requires_python, FILES["cpu"]):
        problems.append(f"{FILES['conda']} is not what scripts/conda_env.py writes from {FILES['cpu']}")
    deps = yaml.safe_load(text)["dependencies"]
    specs = [d for d in deps if isinstance(d, str)]
    if f"python{requires_python}" not in specs:
        problems.append(f"{FILES['conda']}: python is not pyproject.toml's requires-python {requires_python}")
    torch = {Version(v).public for v, _ in cpu.get("torch", [])}
    if len(torch) != 1 or f"pytorch={torch.pop()}=cpu_*" not in specs:
        problems.append(f"{FILES['conda']}: no conda-forge pytorch CPU build at the lock's torch version")
    pip = next((d["pip"] for d in deps if isinstance(d, dict) and "pip" in d), [])
    if local := [e for e in pip if e.startswith("-") or "/" in e or "$" in e]:
        problems.append(f"{FILES['conda']}: options or machine paths in its pip list: {local}")
    pinned = {canonicalize_name(Requirement(e).name): e for e in pip if not e.startswith("-")}
    expected = {name: str(req) for name, entries in cpu.items() if name != "torch" for _, req in entries}
    if pinned != expected:
        diff = sorted(f"{n}: conda {pinned.get(n)} vs lock {expected.get(n)}"
                      for n in set(pinned) | set(expected) if pinned.get(n) != expected.get(n))
        problems.append(f"{FILES['conda']} does not pin what {FILES['cpu']} pins: {diff}")
    return problems


def lock_problems(root: Path) -> list[str]:
    """Every way in which the locks and the conda env under root disagree with its pyproject.toml (empty: none)."""
    paths = {key: root / rel for key, rel in FILES.items()}
    problems: list[str] = []
    locks: dict[str, Pins] = {}
    for key in ("cpu", "cuda"):
        locks[key], options, found = read_lock(paths[key])
        problems += found
        header = paths[key].read_text(encoding="utf-8").splitlines()[:2]
        if not (len(header) == 2 and header[1].strip("# ") == "scripts/lock.sh"):
            problems.append(f"{FILES[key]}: its header does not name scripts/lock.sh, which writes it")
        if local := [o for o in options if not o.split(None, 1)[-1].startswith("https://")]:
            problems.append(f"{FILES[key]}: names a folder of some machine: {local}")
        if key == "cpu" and f"--extra-index-url {TORCH_CPU_INDEX}" not in options:
            problems.append(f"{FILES[key]}: does not name PyTorch's CPU index ({TORCH_CPU_INDEX})")
    for req in pyproject_requirements(paths["pyproject"]):
        name = canonicalize_name(req.name)
        for key, pins in locks.items():
            if name not in pins:
                problems.append(f"{FILES[key]}: {req} of pyproject.toml is not pinned")
            problems += [f"{FILES[key]}: {name}=={v} does not satisfy pyproject.toml's {req}"
                         for v, _ in pins.get(name, []) if not req.specifier.contains(Version(v), prereleases=True)]
    cpu, cuda = locks["cpu"], locks["cuda"]
    if bad := sorted(n for n in cpu if CUDA_PACKAGE.match(n) and n not in NOT_CUDA):
        problems.append(f"{FILES['cpu']}: CUDA packages in the CPU lock: {bad}")
    for platform in PLATFORMS:
        builds = {key: torch_for(pins, platform) for key, pins in locks.items()}
        if any(len(found) != 1 for found in builds.values()):
            problems.append(f"torch on {platform}: not one pin per lock: {builds}")
            continue
        cpu_build = Version(builds["cpu"][0]).local
        if platform.startswith("linux") and cpu_build != "cpu":
            problems.append(f"{FILES['cpu']}: torch=={builds['cpu'][0]} on {platform} is not a +cpu build")
        if platform.startswith("macos") and cpu_build is not None:
            problems.append(f"{FILES['cpu']}: torch=={builds['cpu'][0]} on {platform} is not PyPI's build")
        if Version(builds["cuda"][0]).local is not None:
            problems.append(f"{FILES['cuda']}: torch=={builds['cuda'][0]} is not PyPI's (CUDA) build")
    if not any(CUDA_PACKAGE.match(n) and n not in NOT_CUDA for n in cuda):
        problems.append(f"{FILES['cuda']}: no CUDA package (nvidia-*, triton): not a CUDA lock")
    if "--hash=" not in paths["cuda"].read_text(encoding="utf-8"):
        problems.append(f"{FILES['cuda']}: no hashes (every pin comes from PyPI, so every pin can have them)")
    cpu_v, cuda_v = versions(cpu), versions(cuda)
    torches = {Version(v).public for v, _ in cpu.get("torch", []) + cuda.get("torch", [])}
    if len(torches) > 1:
        problems.append(f"torch differs between the locks beyond its build: {sorted(torches)}")
    shared = set(cpu) & set(cuda) - {"torch"}
    differ = sorted(f"{n}: {cpu_v[n]} vs {cuda_v[n]}" for n in shared if cpu_v[n] != cuda_v[n])
    if differ:
        problems.append(f"the two locks pin different versions: {differ}")
    if only := sorted(n for n in set(cpu) ^ set(cuda) if not (n in cuda and CUDA_PACKAGE.match(n))):
        problems.append(f"packages in one lock only that are not torch's CUDA packages: {only}")
    return problems + conda_problems(root, cpu)


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
        """The package's (first) pin in a lock, as `name==version`."""
        return f"{name}=={read_lock(self.root / FILES[key])[0][name][0][0]}"

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
    version = read_lock(REPO / FILES["cpu"])[0]["transformers"][0][0]
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


def test_a_lock_that_names_a_local_folder_or_not_the_cpu_index_is_reported(copy):
    folder = copy.root / "wheels"  # a folder of this machine, as a lock made with TORCH_CPU_WHEELS might name it
    copy.edit("cpu", r"^--extra-index-url .*$", f"--find-links {folder}")
    copy.problems(f"requirements/cpu.txt: names a folder of some machine: ['--find-links {folder}']",
                  "requirements/cpu.txt: does not name PyTorch's CPU index")


def test_cuda_packages_or_a_non_cpu_torch_in_the_cpu_lock_are_reported(copy):
    copy.edit("cpu", r"^torch==(\S+)\+cpu ; sys_platform == 'linux'$", r"torch==\1 ; sys_platform == 'linux'")
    copy.replace_pin("cpu", "tqdm", copy.pin("cpu", "tqdm") + "\nnvidia-cublas==13.1.1.3\ntriton==3.7.1")
    copy.problems("on linux-x86_64 is not a +cpu build", "on linux-aarch64 is not a +cpu build",
                  "CUDA packages in the CPU lock: ['nvidia-cublas', 'triton']")


def test_a_platform_without_one_torch_is_reported(copy):
    copy.edit("cpu", r"^torch==(\S+) ; sys_platform != 'linux'$", r"torch==\1 ; sys_platform == 'win32'")
    copy.problems("torch on macos-arm64: not one pin per lock")


def test_a_cuda_lock_without_cuda_torch_is_reported(copy):
    for name in read_lock(REPO / FILES["cuda"])[0]:
        if CUDA_PACKAGE.match(name) and name not in NOT_CUDA:
            copy.replace_pin("cuda", name, "")
    copy.replace_pin("cuda", "torch", "torch==2.13.0+cpu --hash=sha256:" + "0" * 64)
    copy.problems("is not PyPI's (CUDA) build", "no CUDA package")


def test_locks_that_pin_different_versions_are_reported(copy):
    copy.replace_pin("cuda", "numpy", "numpy==1.26.0 --hash=sha256:" + "0" * 64)
    copy.problems("the two locks pin different versions: ['numpy: ")


def test_a_cuda_pin_without_a_hash_is_reported(copy):
    copy.replace_pin("cuda", "tqdm", copy.pin("cuda", "tqdm"))
    copy.problems("requirements/cuda.txt: pins without a hash: ['tqdm']")


def test_a_conda_env_that_differs_from_the_cpu_lock_is_reported(copy):
    copy.edit("conda", rf"- {re.escape(copy.pin('cpu', 'pandas'))}$", "- pandas==2.1.0")
    copy.edit("conda", r"- python>=.*$", "- python=3.11")
    copy.edit("conda", r"^- pytorch=.*$", "- pytorch")
    copy.problems("envs/cocoracle.yaml is not what scripts/conda_env.py writes",
                  "envs/cocoracle.yaml does not pin what requirements/cpu.txt pins: ['pandas: conda pandas==2.1.0",
                  "python is not pyproject.toml's requires-python", "no conda-forge pytorch CPU build")


def test_a_conda_env_with_a_machine_path_is_reported(copy):
    folder = copy.root / "wheels"
    copy.edit("conda", r"^(- pip:)$", f"\\1\n  - --find-links {folder}\n  - --editable ${{PWD}}")
    copy.problems("envs/cocoracle.yaml: options or machine paths in its pip list: "
                  f"['--find-links {folder}', '--editable ${{PWD}}']")


def test_a_header_without_the_command_is_reported(copy):
    copy.edit("cpu", r"^#    scripts/lock\.sh$", "#    uv pip compile -o cpu.txt", count=1)
    copy.problems("requirements/cpu.txt: its header does not name scripts/lock.sh")


def test_the_conda_jobs_cli_runs_the_checkouts_own_package(tmp_path):
    """workflow/bin/cocoracle (first on PATH for conda jobs, whose env holds no project code) imports the package of
    the checkout it lies in, wherever it is run from."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "cocoracle", checkout / "cocoracle", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "workflow" / "bin", checkout / "workflow" / "bin")
    shim = checkout / "workflow" / "bin" / "cocoracle"
    probe = ("import runpy, sys\nsys.argv = ['cocoracle', 'check-params', '--params', sys.argv[1]]\n"
             f"try:\n    runpy.run_path({str(shim)!r}, run_name='__main__')\n"
             "except SystemExit as exit:\n    print(sys.modules['cocoracle'].__file__, exit.code)\n")
    proc = subprocess.run([sys.executable, "-c", probe, str(REPO / "params.yaml")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.stdout.split()[-2:] == [str(checkout / "cocoracle" / "__init__.py"), "0"], proc.stdout + proc.stderr
