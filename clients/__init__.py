"""Client-side training: local optimisers and training loops."""
