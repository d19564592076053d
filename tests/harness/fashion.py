"""Test harness: fashion (placeholder; filled in by its owner)."""
