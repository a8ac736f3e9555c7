"""The rank loops: actor, inference and trainer ranks, and every role in one process (``local``)."""
