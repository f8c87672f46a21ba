"""One router per resource; :mod:`server.api.main` mounts them under ``/api/v1``."""
