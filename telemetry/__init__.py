"""Telemetry: Prometheus metrics and OpenTelemetry traces for gRPC clients and servers."""
