"""Plan-entitlement gRPC service: owns plan state in PostgreSQL, answers CanUse/GetLimits."""
