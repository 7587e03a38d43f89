"""The event stream: the hub readers wait on, named durable consumers, retention."""
