"""Scripts reproducing the reference studies with fsjax (run from the repository root)."""
