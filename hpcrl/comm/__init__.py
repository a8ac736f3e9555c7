"""hpcrl's communication layer: rank topology, tags, buffer channels, control messages, parameters, collectives.

Modules (import the one you need; nothing here is imported eagerly, and only
:mod:`hpcrl.comm.collectives` ever touches torch, lazily):

* :mod:`hpcrl.comm.mpi`: ``get_world()`` with a clear error when no MPI library loads; ``abort()``.
* :mod:`hpcrl.comm.tags`: the one ``Tag`` enum of every message tag.
* :mod:`hpcrl.comm.topology`: pure (layout, world size) -> roles and peers; no MPI.
* :mod:`hpcrl.comm.polling`: back-off waiting (no busy spinning on oversubscribed nodes).
* :mod:`hpcrl.comm.channel`: the data plane: NamedArray ``SendChannel`` / ``RecvChannel`` (schema once, then
  one buffer per message; every message checked and booked in one place).
* :mod:`hpcrl.comm.fanin`: ``poll_any`` / ``recv_any``, one ``Testsome`` over many channels.
* :mod:`hpcrl.comm.wire`: the 64-byte message header, its limits, the wire dtypes, ``ChannelError``,
  ``SchemaError`` and ``Message``.
* :mod:`hpcrl.comm.schema`: a NamedArray's layout on the wire (``Schema``: JSON handshake, pack/unpack,
  ``allocate_views`` and its ``WireLayout``).
* :mod:`hpcrl.comm.codegen`: code generated from a schema (the channels' structure check and NamedArray
  builders) and finding node classes by name.
* :mod:`hpcrl.comm.shutdown`: ``drain_and_close``, the orderly end of a rank's communication.
* :mod:`hpcrl.comm.control`: small JSON control messages (``post_obj`` / ``poll_obj``), never pickle.
* :mod:`hpcrl.comm.params`: newest-wins parameter publication from the trainer leader.
* :mod:`hpcrl.comm.collectives`: trainer gradient synchronisation (MPI Allreduce, gloo or nccl).
* :mod:`hpcrl.comm.startup`: start-up collectives (``Bcast_text``, ``Gather_rank_table``, ``Bcast_state_dict``).
* :mod:`hpcrl.comm.agreement`: the trainer ranks' per-step agreement (``Iallreduce_step``).
"""
