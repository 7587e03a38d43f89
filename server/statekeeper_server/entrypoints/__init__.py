"""How the outside reaches the server: grpc/ (the API's servicers). Entrypoints convert, call
the core and the features, and convert back; they never touch a store backend directly."""
