"""Local servers speaking the real wire protocols of the services mountfs mounts."""
