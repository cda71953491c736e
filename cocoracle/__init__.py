"""cocoracle: Coconut latent reasoning read by activation oracles and probes."""
from cocoracle.numerics import pin_environment

pin_environment()  # before anything imports torch: MKL reads these once
