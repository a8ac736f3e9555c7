"""Runtime: what a process of a run needs besides its role (session, rank context, component building)."""
