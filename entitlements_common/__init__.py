"""What every process needs and nothing more: configuration errors, settings read from the
environment, secret lists, bearer metadata and the server's TLS credentials. The internet-facing
gateway imports only this package and the client distribution (the generated API, the client
TLS settings `entitlements_client.Tls`), never the service (its domain, store or Clerk client)."""
