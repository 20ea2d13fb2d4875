"""Storage engines (being built on the storage branch)."""
