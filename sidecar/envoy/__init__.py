"""The Envoy data plane: meshkit's config translated to xDS resources and served to Envoy."""
