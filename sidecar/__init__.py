"""The meshkit sidecar process: config, inbound and outbound proxying, admin, drain."""
