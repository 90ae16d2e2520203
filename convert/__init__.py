"""PyTorch -> reprog-jax checkpoint conversion (`python -m convert torch ...`)."""
