"""Small mechanisms below every layer (layer 0): atomic file replacement, retry backoff. Import nothing of ours."""
