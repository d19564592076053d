"""Test harness: backbone (placeholder; filled in by its owner)."""
