"""Acting: the env ring, trajectory assembly, and a policy acting on a ring in this process."""
