"""Test harness: cluster (placeholder; filled in by its owner)."""
