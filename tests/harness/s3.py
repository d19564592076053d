"""Test harness: s3 (placeholder; filled in by its owner)."""
