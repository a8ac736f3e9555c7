"""System roles: actor, inference and trainer ranks, and the single-process runner."""
