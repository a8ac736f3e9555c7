"""Learning: batches of fragments, trainer steps, and the checkpoints they are saved in."""
