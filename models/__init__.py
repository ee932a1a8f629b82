"""Model definitions (pure torch: no torch.distributed, no caching)."""
