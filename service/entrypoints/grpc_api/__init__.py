"""gRPC entrypoints: servicers that translate between the wire and the domain, and interceptors."""
