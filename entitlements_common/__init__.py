"""What every process needs and nothing more: configuration errors, secret lists, bearer
metadata and TLS credentials. The internet-facing gateway imports only this package and the
generated API, never the service (its domain, store or Clerk client)."""
