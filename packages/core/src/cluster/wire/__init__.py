"""The wire: how processes of a cluster talk (DESIGN.md §11).

- :mod:`.messages`: every message as an attrs type with a wire tag (pure values);
- :mod:`.codec`: frames and the msgpack codec, bytes in and out, no I/O;
- :mod:`.handshake`: the versioned, token-authenticated handshake;
- :mod:`.streams`: addresses, TCP and same-host Unix-socket streams;
- :mod:`.connection`: authenticated connections (reader threads, request/reply) and the dialer;
- :mod:`.headlink`: the connection to the head, dialled again whenever it closes, and calls
  that wait (bounded) for the head while it is away.

May import: the leaf modules of ``cluster`` (errors) and nothing else of ours.
"""
