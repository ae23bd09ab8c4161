"""The application layer: use cases over small ports (unit of work, repositories, clock)."""
