"""`make bench`: throughput, latency, ingest, freshness and memory, measured in one run."""
