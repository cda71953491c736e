"""Bitwise-reproducible numerics: the same inputs and params give the same bytes, whatever the load.

torch's CPU matrix products come from Intel MKL, which by default picks its code path and its number of
threads per call (MKL_DYNAMIC), and whose results depend on both: two runs of one step on a busy machine
(or in a SLURM job beside a local one) could differ in the last bits and drift apart over training.
MKL's strict conditional-numerical-reproducibility mode gives the same bits for ?gemm whatever the threads;
these variables must be set before torch loads MKL, so importing the package sets them (a value the user
exported wins). On CUDA, torch's deterministic algorithms need cuBLAS's fixed workspace.

The number of threads is a parameter (run.threads), not the engine's core count: a sum split over more threads
is added in another order, so the bits are the same only on the same number of threads (and the same CPU kind).
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


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


def pin_threads(threads: int) -> None:
    """Compute with `threads` threads in torch and the BLAS libraries, whatever the engine or the job's cores (the
    engines set these variables to the job's cores; this overrides them before numpy or torch start a pool)."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    import torch

    torch.set_num_threads(threads)


def deterministic_algorithms() -> None:
    """torch's deterministic kernels where it has them (a warning, not an error, where it has none)."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
