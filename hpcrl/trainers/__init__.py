"""Built-in trainers: PPO (with an optional V-trace correction) and a null trainer for tests."""
