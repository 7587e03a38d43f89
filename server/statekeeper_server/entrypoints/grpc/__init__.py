"""Thin gRPC servicers: convert, call the engine, convert back. Errors map to status codes in
errors.py; handler.py wraps every method the same way (malformed input, errors, metrics)."""
