"""Features built on the commit core: tasks (timers, outbound work), events (the hub, durable
consumers, retention), savepoints (runs, tree snapshots). Each may import domain/, core/ and the
storage interface; none imports a store backend, gRPC or an entrypoint."""
