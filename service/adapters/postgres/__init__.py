"""PostgreSQL store adapter (asyncpg): migrations, one transaction per event, reads."""
