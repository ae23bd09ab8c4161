"""Adapters: PostgreSQL (SQL only, split by what it stores), Clerk's Backend API, the cache."""
