"""discovery: Docker -> Consul -> HAProxy, dynamic load balancing for containers."""
