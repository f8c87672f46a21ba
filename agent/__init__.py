"""telemaint agent: inventory, health checks, backups and support sessions on the customer's machine."""

__version__ = "0.1.0"
