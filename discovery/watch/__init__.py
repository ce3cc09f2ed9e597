"""The watcher: follows Consul and keeps HAProxy serving the passing instances (`python -m
discovery.watch`; see `main`)."""
