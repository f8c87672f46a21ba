"""Where the agent looks for its config and keeps its state, and the variables that move them."""

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/telemaint/agent.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/telemaint")
CONFIG_ENV = "TELEMAINT_CONFIG"
STATE_DIR_ENV = "TELEMAINT_STATE_DIR"
