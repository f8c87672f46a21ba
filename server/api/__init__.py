"""The JSON API under ``/api/v1``: agent endpoints (device token) and support endpoints (user)."""
