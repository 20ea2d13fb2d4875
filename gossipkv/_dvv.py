"""DVVSet (being built on the storage branch)."""
