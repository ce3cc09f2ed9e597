"""The registrator: registers the Docker containers that opt in as Consul services (`python -m
discovery.register`; see `main`)."""
