"""Run storage: the run dir and its lock, HDF5 checkpoints (atomic, validated), SWMR traces, tree <-> HDF5."""
