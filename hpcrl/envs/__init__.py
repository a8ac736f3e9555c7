"""Built-in environments: gymnasium, Atari and PettingZoo adapters, toy tasks, and result checks."""
