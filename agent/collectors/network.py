"""Network: interfaces, default gateways, DNS, configured NTP servers, clock sync, listening ports.

Files are read below ``root`` (``/`` in production, a fake tree in tests), so the parsers here work
without the ``ip``, ``ss`` or ``resolvectl`` commands, which appliances often lack. Addresses in
``/proc/net/route`` and ``/proc/net/tcp*`` are printed by the kernel in host byte order and are
decoded as such, so big-endian equipment (MIPS, PowerPC) reads correctly too.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from agent.collectors import CollectContext, Collector, Field, clock, register

logger = logging.getLogger(__name__)

ROOT = Path("/")
ROUTE_FILE = "proc/net/route"
IPV6_ROUTE_FILE = "proc/net/ipv6_route"
TCP_FILES = (("ipv4", "proc/net/tcp"), ("ipv6", "proc/net/tcp6"))
RESOLV_CONF = "etc/resolv.conf"
# What systemd-resolved's stub forwards to; /etc/resolv.conf then names only the stub itself.
RESOLVED_UPSTREAM_CONF = "run/systemd/resolve/resolv.conf"
STUB_RESOLVERS = frozenset({"127.0.0.53", "127.0.0.54"})
CHRONY_FILES = ("etc/chrony/chrony.conf", "etc/chrony.conf")
CHRONY_GLOBS = ("etc/chrony/conf.d/*.conf", "etc/chrony/sources.d/*.sources")
NTPD_FILES = ("etc/ntp.conf", "etc/ntpsec/ntp.conf")
TIMESYNCD_FILE = "etc/systemd/timesyncd.conf"
TIMESYNCD_GLOB = "etc/systemd/timesyncd.conf.d/*.conf"
TIMESYNCD_KINDS = {"NTP": "server", "FallbackNTP": "fallback"}
NTP_SOURCE_DIRECTIVES = frozenset({"server", "pool", "peer"})
COMMENT_CHARS = "#;!%"

TCP_STATE_LISTEN = "0A"
RTF_UP = 0x0001
RTF_GATEWAY = 0x0002
RTF_REJECT = 0x0200

DUPLEX_NAMES = {psutil.NIC_DUPLEX_FULL: "full", psutil.NIC_DUPLEX_HALF: "half"}
FAMILY_NAMES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


def _shown(relative: str | Path) -> str:
    """Return the path as it is on the real machine, whatever ``root`` the files were read from."""
    return "/" + str(relative)


def _read_optional(root: Path, relative: str | Path) -> str | None:
    """Return the file's text, or None when it is absent or unreadable (the latter is logged)."""
    try:
        return (root / relative).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot read %s: %s", _shown(relative), exc)
        return None


def _config_lines(text: str) -> Iterator[list[str]]:
    """Yield the words of each line that is neither blank nor a comment."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0][0] not in COMMENT_CHARS:
            yield words


def _prefixlen(netmask: str | None) -> int | None:
    if not netmask:
        return None
    try:
        return bin(int(ipaddress.ip_address(netmask))).count("1")
    except ValueError:
        return None


def interfaces() -> list[dict[str, Any]]:
    """Return each network interface with its link state and addresses, sorted by name."""
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    result = []
    for name in sorted(set(addrs) | set(stats)):
        mac = None
        addresses = []
        for addr in addrs.get(name, []):
            if addr.family == psutil.AF_LINK:
                mac = mac or addr.address
            elif addr.family in FAMILY_NAMES:
                addresses.append(
                    {
                        "family": FAMILY_NAMES[addr.family],
                        "address": addr.address.split("%", 1)[0],
                        "netmask": addr.netmask,
                        "prefixlen": _prefixlen(addr.netmask),
                    }
                )
        stat = stats.get(name)
        result.append(
            {
                "name": name,
                "mac": mac,
                "mtu": stat.mtu if stat else None,
                "up": stat.isup if stat else None,
                "speed_mbps": (stat.speed or None) if stat else None,
                "duplex": DUPLEX_NAMES.get(stat.duplex) if stat else None,
                "addresses": addresses,
            }
        )
    return result


def _ip_from_proc(hex_words: str) -> str:
    """Decode an address the kernel printed as host-order 32-bit words (``/proc/net/route`` and
    ``/proc/net/tcp``: one word; ``/proc/net/tcp6``: four). Raises ValueError when malformed."""
    packed = b"".join(struct.pack("=I", int(hex_words[i : i + 8], 16)) for i in range(0, len(hex_words), 8))
    return str(ipaddress.ip_address(packed))


def default_gateways(root: Path = ROOT) -> list[dict[str, Any]]:
    """Return the default routes via a gateway, ``{family, gateway, interface}``, IPv4 first and
    lowest metric first within a family. Missing route tables give no entries."""
    found = []
    text = _read_optional(root, ROUTE_FILE) or ""
    for words in (line.split() for line in text.splitlines()[1:]):
        try:
            iface, destination, gateway, flags, metric, mask = (words[i] for i in (0, 1, 2, 3, 6, 7))
            if (
                int(destination, 16)
                or int(mask, 16)
                or (int(flags, 16) & (RTF_UP | RTF_GATEWAY)) != (RTF_UP | RTF_GATEWAY)
            ):
                continue
            found.append((int(metric), "ipv4", _ip_from_proc(gateway), iface))
        except (IndexError, ValueError):
            continue
    text = _read_optional(root, IPV6_ROUTE_FILE) or ""
    for words in (line.split() for line in text.splitlines()):
        try:
            destination, destination_len, nexthop, metric, flags, iface = (words[i] for i in (0, 1, 4, 5, 8, 9))
            flag_bits = int(flags, 16)
            if (
                int(destination, 16)
                or int(destination_len, 16)
                or flag_bits & RTF_REJECT
                or (flag_bits & (RTF_UP | RTF_GATEWAY)) != (RTF_UP | RTF_GATEWAY)
            ):
                continue
            gateway = str(ipaddress.IPv6Address(bytes.fromhex(nexthop)))
            found.append((int(metric, 16), "ipv6", gateway, iface))
        except (IndexError, ValueError):
            continue
    result = []
    for _metric, family, gateway, iface in sorted(found, key=lambda f: (f[1], f[0])):
        entry = {"family": family, "gateway": gateway, "interface": iface}
        if entry not in result:
            result.append(entry)
    return result


def _parse_resolv_conf(text: str) -> tuple[list[str], list[str]]:
    """Return (nameservers, search domains); the last ``search`` or ``domain`` line wins."""
    nameservers: list[str] = []
    search: list[str] = []
    for words in _config_lines(text):
        if words[0] == "nameserver" and len(words) > 1:
            nameservers.append(words[1])
        elif words[0] == "search":
            search = words[1:]
        elif words[0] == "domain":
            search = words[1:2]
    return nameservers, search


def dns_config(root: Path = ROOT) -> dict[str, Any]:
    """Return ``{nameservers, search, source_files, systemd_resolved_stub, error}``.

    When /etc/resolv.conf names only systemd-resolved's stub, the servers the stub forwards to are
    read from /run/systemd/resolve/resolv.conf if it exists. ``error`` says why /etc/resolv.conf
    could not be read (None when it could); the lists are then empty.
    """
    result: dict[str, Any] = {
        "nameservers": [],
        "search": [],
        "source_files": [],
        "systemd_resolved_stub": False,
        "error": None,
    }
    try:
        text = (root / RESOLV_CONF).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        result["error"] = f"cannot read {_shown(RESOLV_CONF)}: {exc.strerror or exc}"
        return result
    nameservers, search = _parse_resolv_conf(text)
    result["source_files"].append(_shown(RESOLV_CONF))
    if nameservers and set(nameservers) <= STUB_RESOLVERS:
        result["systemd_resolved_stub"] = True
        upstream = _read_optional(root, RESOLVED_UPSTREAM_CONF)
        if upstream is not None:
            nameservers, upstream_search = _parse_resolv_conf(upstream)
            search = upstream_search or search
            result["source_files"].append(_shown(RESOLVED_UPSTREAM_CONF))
    result["nameservers"] = nameservers
    result["search"] = search
    return result


def _existing(root: Path, names: tuple[str, ...], patterns: tuple[str, ...]) -> list[Path]:
    """Return the named files and the files matching the glob patterns, relative to ``root``."""
    files = [Path(name) for name in names]
    for pattern in patterns:
        files.extend(sorted(path.relative_to(root) for path in root.glob(pattern)))
    return files


def _ntp_daemon_sources(root: Path, daemon: str, files: list[Path]) -> list[dict[str, Any]]:
    """Return the ``server``/``pool``/``peer`` lines of chrony or ntpd configuration files."""
    sources = []
    for relative in files:
        text = _read_optional(root, relative)
        if text is None:
            continue
        sources.extend(
            {
                "server": words[1],
                "kind": words[0],
                "daemon": daemon,
                "source_file": _shown(relative),
            }
            for words in _config_lines(text)
            if words[0] in NTP_SOURCE_DIRECTIVES and len(words) > 1
        )
    return sources


def _timesyncd_sources(root: Path) -> list[dict[str, Any]]:
    """Return systemd-timesyncd's NTP= and FallbackNTP= servers as timesyncd would end up with
    them: assignments add to the list, an empty assignment clears it, drop-ins come last."""
    configured: dict[str, list[tuple[str, str]]] = {key: [] for key in TIMESYNCD_KINDS}
    for relative in _existing(root, (TIMESYNCD_FILE,), (TIMESYNCD_GLOB,)):
        text = _read_optional(root, relative)
        if text is None:
            continue
        section = None
        for line in text.splitlines():
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if section != "Time" or not sep or key not in configured:
                continue
            if not value.strip():
                configured[key].clear()
            configured[key].extend((server, _shown(relative)) for server in value.split())
    return [
        {
            "server": server,
            "kind": TIMESYNCD_KINDS[key],
            "daemon": "timesyncd",
            "source_file": shown,
        }
        for key, servers in configured.items()
        for server, shown in servers
    ]


def ntp_servers(root: Path = ROOT) -> list[dict[str, Any]]:
    """Return the NTP servers configured for chrony, ntpd and systemd-timesyncd, each
    ``{server, kind, daemon, source_file}``; absent files give no entries."""
    return [
        *_ntp_daemon_sources(root, "chrony", _existing(root, CHRONY_FILES, CHRONY_GLOBS)),
        *_ntp_daemon_sources(root, "ntpd", [Path(name) for name in NTPD_FILES]),
        *_timesyncd_sources(root),
    ]


def clock_status() -> dict[str, Any]:
    """Return the kernel's clock synchronisation state, or ``{synchronized: None, error}``."""
    try:
        return clock.clock_sync().as_dict()
    except OSError as exc:
        return {"synchronized": None, "error": str(exc)}


def listening_tcp(root: Path = ROOT) -> list[dict[str, Any]]:
    """Return the listening TCP sockets, ``{address, port, family}``, without duplicates, sorted by
    port, family and address. A missing table (IPv6 disabled) gives no entries."""
    found = set()
    for family, relative in TCP_FILES:
        text = _read_optional(root, relative) or ""
        for words in (line.split() for line in text.splitlines()[1:]):
            try:
                if words[3] != TCP_STATE_LISTEN:
                    continue
                address_hex, port_hex = words[1].split(":")
                found.add((int(port_hex, 16), family, _ip_from_proc(address_hex)))
            except (IndexError, ValueError, struct.error):
                continue
    return [{"address": address, "port": port, "family": family} for port, family, address in sorted(found)]


@register
class NetworkCollector(Collector):
    name = "network"
    description = "Interfaces, default gateways, DNS, NTP servers, clock sync and listening ports"
    fields = (
        Field("interfaces[].name", "Interface name"),
        Field("interfaces[].mac", "Hardware address"),
        Field("interfaces[].mtu", "Largest packet (MTU, bytes)"),
        Field("interfaces[].up", "Link is up (carrier present)"),
        Field("interfaces[].speed_mbps", "Link speed (None when unknown)", "Mbit/s"),
        Field("interfaces[].duplex", "full, half or None when unknown"),
        Field("interfaces[].addresses[].family", "ipv4 or ipv6"),
        Field("interfaces[].addresses[].address", "Address"),
        Field("interfaces[].addresses[].netmask", "Netmask"),
        Field("interfaces[].addresses[].prefixlen", "Prefix length", "bit"),
        Field("gateways[].family", "ipv4 or ipv6"),
        Field("gateways[].gateway", "Default gateway"),
        Field("gateways[].interface", "Interface towards the gateway"),
        Field("dns.nameservers[]", "DNS servers, in the order they are asked"),
        Field("dns.search[]", "DNS search domains"),
        Field("dns.source_files[]", "Files the DNS settings were read from"),
        Field("dns.systemd_resolved_stub", "/etc/resolv.conf names only systemd-resolved's stub"),
        Field("dns.error", "Why /etc/resolv.conf could not be read (None when it could)"),
        Field("ntp[].server", "Configured NTP server or pool"),
        Field("ntp[].kind", "server, pool, peer or fallback"),
        Field("ntp[].daemon", "chrony, ntpd or timesyncd"),
        Field("ntp[].source_file", "File it is configured in"),
        Field("clock.synchronized", "The kernel clock is disciplined by NTP (None when unknown)"),
        Field("clock.max_error_s", "Kernel's maximum clock error", "s"),
        Field("clock.estimated_error_s", "Kernel's estimated clock error", "s"),
        Field("clock.kernel_state", "adjtimex clock state"),
        Field("clock.unsync_flag", "Kernel STA_UNSYNC flag set"),
        Field("clock.error", "Why the kernel could not be asked"),
        Field("listening_tcp[].address", "Local address listened on"),
        Field("listening_tcp[].port", "TCP port"),
        Field("listening_tcp[].family", "ipv4 or ipv6"),
    )

    def __init__(self, context: CollectContext, root: Path = ROOT):
        super().__init__(context)
        self.root = root

    def collect(self) -> dict[str, Any]:
        """Return the network facts; the keys are those declared in ``fields``."""
        return {
            "interfaces": interfaces(),
            "gateways": default_gateways(self.root),
            "dns": dns_config(self.root),
            "ntp": ntp_servers(self.root),
            "clock": clock_status(),
            "listening_tcp": listening_tcp(self.root),
        }
