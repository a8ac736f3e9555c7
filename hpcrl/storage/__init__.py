"""Run storage: HDF5 checkpoints (atomic, validated), per-rank SWMR traces and the tree <-> HDF5 encoding."""
