"""Pure domain: catalog, event normalisation, entitlement resolution. No I/O here."""
