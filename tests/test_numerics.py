"""Reproducible numerics: with the package imported first, a matrix product has the same bits on 1 and 2 threads."""
from __future__ import annotations

import os
import subprocess
import sys

from cocoracle.numerics import REPRODUCIBLE_ENV

PRODUCT_ON_1_AND_2_THREADS = """
import hashlib, sys
{first}
import torch
torch.manual_seed(0)
a, w = torch.randn(333, 1000), torch.randn(1000, 77)
digests = []
for threads in (1, 2):
    torch.set_num_threads(threads)
    digests.append(hashlib.sha256((a @ w).numpy().tobytes()).hexdigest())
print(digests[0] == digests[1])
"""


def _run(first: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in REPRODUCIBLE_ENV}
    code = PRODUCT_ON_1_AND_2_THREADS.format(first=first)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_importing_the_package_makes_matrix_products_independent_of_threads():
    assert _run("import cocoracle").strip() == "True"


def test_the_package_sets_the_variables_without_overriding_the_users():
    env = {**{k: v for k, v in os.environ.items() if k not in REPRODUCIBLE_ENV}, "MKL_DYNAMIC": "TRUE"}
    code = "import os, cocoracle; print([os.environ[k] for k in sorted(cocoracle.numerics.REPRODUCIBLE_ENV)])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    expected = [("TRUE" if k == "MKL_DYNAMIC" else REPRODUCIBLE_ENV[k]) for k in sorted(REPRODUCIBLE_ENV)]
    assert out.strip() == str(expected)
