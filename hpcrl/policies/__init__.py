"""Built-in policies: actor-critic (separate or shared networks) and a uniform random policy."""
