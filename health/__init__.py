"""Health: grpc.health.v1 serving, graceful drain, and endpoint health checking."""
