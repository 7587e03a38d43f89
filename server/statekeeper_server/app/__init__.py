"""The composition root: configuration, the server, health, reflection, signals."""
