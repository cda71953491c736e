#!/usr/bin/env bash
# Regenerate the pinned environment from pyproject.toml (its dependencies and the `workflow` and `test` extras).
# Both locks are universal (uv's --universal: one file for every platform and every Python that pyproject.toml's
# requires-python admits, with environment markers where a platform needs other packages):
#   requirements/cpu.txt   torch's CPU build: torch==X+cpu from PyTorch's CPU index on Linux (x86_64, aarch64),
#                          PyPI's torch==X elsewhere (macOS arm64: its PyPI build is the CPU one); no CUDA package.
#                          The lock names PyTorch's CPU index itself (an --extra-index-url line), so a plain
#                          `pip install -r requirements/cpu.txt` finds the +cpu wheels. No hashes: pip's hash mode
#                          needs a hash on every pin, and the +cpu wheels' hashes come from PyTorch's index.
#   requirements/cuda.txt  torch==X from PyPI with its CUDA packages (Linux x86_64 and aarch64), every pin hashed.
#   envs/cocoracle.yaml    the conda env for `snakemake --software-deployment-method conda`, written from cpu.txt by
#                          scripts/conda_env.py: python and pytorch (CPU build) from conda-forge, the other pins by pip.
# Each lock's header names the exact `uv pip compile` command that made it (run from the repository root).
#
# Usage: scripts/lock.sh [uv pip compile options]    e.g. after editing pyproject.toml's dependencies.
#   Versions already in the locks are kept wherever pyproject.toml still allows them (uv prefers the pins of the
#   file it overwrites); `scripts/lock.sh --upgrade` moves everything to the newest allowed versions,
#   `scripts/lock.sh --upgrade-package NAME` one package. To move torch, change TORCH below.
# Needs uv (`pip install uv`; the locks were made with uv 0.13.10), PyPI and PyTorch's CPU index. Where that index
# cannot be reached, TORCH_CPU_WHEELS=DIR (a folder or page of torch +cpu wheels) is read in its place; the lock
# written is the same. tests/test_lock.py fails while the locks, the conda env and pyproject.toml disagree, and
# tests/test_lock_resolution.py while a pin has no wheel for a supported (platform, Python) pair.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
[[ -x $UV ]] || { echo "lock.sh: needs uv (pip install uv), or UV=/path/to/uv" >&2; exit 2; }
PYTHON_MIN=$(python3 -c 'import re, tomllib; print(re.search(r">=\s*([0-9.]+)",
    tomllib.load(open("pyproject.toml", "rb"))["project"]["requires-python"])[1])')

ARGS="pyproject.toml - --extra workflow --extra test --universal --python-version $PYTHON_MIN"
# lock TORCH_REQUIREMENTS OUTPUT [uv options]: the torch requirements come on standard input (`-`)
lock() {
    # shellcheck disable=SC2086  # ARGS is a list of plain words
    printf "$1" | "$UV" --quiet pip compile $ARGS -o "$2" --custom-compile-command scripts/lock.sh "${@:3}"
    echo "lock.sh: wrote $2"
}
lock "torch==$TORCH\n" requirements/cuda.txt --generate-hashes "$@"

CPU_TORCH="torch==$TORCH+cpu ; sys_platform == 'linux'\ntorch==$TORCH ; sys_platform != 'linux'\n"
if [[ -n ${TORCH_CPU_WHEELS:-} ]]; then
    lock "$CPU_TORCH" requirements/cpu.txt --find-links "$TORCH_CPU_WHEELS" "$@"
else
    lock "$CPU_TORCH" requirements/cpu.txt --extra-index-url "$TORCH_CPU_INDEX" --index-strategy unsafe-best-match "$@"
fi
# the CPU lock names PyTorch's CPU index, and nothing of where it was made
python3 - requirements/cpu.txt "$TORCH_CPU_INDEX" <<'EOF'
import re
import sys

path, index = sys.argv[1:]
text = open(path, encoding="utf-8").read()
text = re.sub(r"^(--find-links|-f|--index-url|-i|--extra-index-url) .*\n", "", text, flags=re.MULTILINE)
lines = text.splitlines(keepends=True)
header = next(i for i, line in enumerate(lines) if not line.startswith("#"))  # uv's header: two comment lines
with open(path, "w", encoding="utf-8") as f:
    f.write("".join(lines[:header] + [f"--extra-index-url {index}\n\n"] + lines[header:]).rstrip("\n") + "\n")
EOF

python3 scripts/conda_env.py requirements/cpu.txt envs/cocoracle.yaml
