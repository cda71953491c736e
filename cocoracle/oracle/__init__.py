"""Activation oracles: reading Coconut thoughts by injecting them into a model that answers questions."""
