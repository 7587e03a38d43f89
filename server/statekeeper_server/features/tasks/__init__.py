"""Tasks emitted by transitions: timers fired by the server, outbound work leased to workers."""
