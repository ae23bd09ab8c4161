"""Development scripts (make run, lock and stub checks); not installed."""
