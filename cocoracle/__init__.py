"""cocoracle: Coconut latent reasoning read by activation oracles and probes."""
