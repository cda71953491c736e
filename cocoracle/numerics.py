"""Bitwise-reproducible numerics: the same inputs and params give the same bytes, whatever the load.

torch's CPU matrix products come from Intel MKL, which by default picks its code path and its number of
threads per call (MKL_DYNAMIC), and whose results depend on both: two runs of one step on a busy machine
(or in a SLURM job beside a local one) could differ in the last bits and drift apart over training.
MKL's strict conditional-numerical-reproducibility mode gives the same bits for ?gemm whatever the threads;
these variables must be set before torch loads MKL, so importing the package sets them (a value the user
exported wins). On CUDA, torch's deterministic algorithms need cuBLAS's fixed workspace.
"""
from __future__ import annotations

import os

REPRODUCIBLE_ENV = {
    "MKL_CBWR": "AUTO,STRICT",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}


def pin_environment() -> None:
    """Set the reproducibility variables that are not set yet (call before torch is imported)."""
    for key, value in REPRODUCIBLE_ENV.items():
        os.environ.setdefault(key, value)


def deterministic_algorithms() -> None:
    """torch's deterministic kernels where it has them (a warning, not an error, where it has none)."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
