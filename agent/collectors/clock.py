"""Is the system clock synchronised? Asked of the kernel (adjtimex), so it works whichever NTP
daemon runs (chrony, ntpd, systemd-timesyncd) and without systemd."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

STA_UNSYNC = 0x0040
# As systemd's ntp_synced(): a maximum error under 16 s means some NTP daemon disciplines the clock.
MAX_SYNCED_ERROR_US = 16_000_000


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockSync:
    synchronized: bool
    max_error_s: float
    estimated_error_s: float
    kernel_state: int
    unsync_flag: bool

    def as_dict(self) -> dict:
        return {
            "synchronized": self.synchronized,
            "max_error_s": self.max_error_s,
            "estimated_error_s": self.estimated_error_s,
            "kernel_state": self.kernel_state,
            "unsync_flag": self.unsync_flag,
        }


def clock_sync() -> ClockSync:
    """Return the kernel's view of clock synchronisation (read-only adjtimex call).

    Raises OSError when the kernel refuses the call.
    """
    libc = ctypes.CDLL(None, use_errno=True)  # the C library already loaded into this process
    timex = _Timex()
    state = libc.adjtimex(ctypes.byref(timex))
    if state < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "adjtimex failed")
    return ClockSync(
        synchronized=timex.maxerror < MAX_SYNCED_ERROR_US,
        max_error_s=timex.maxerror / 1e6,
        estimated_error_s=timex.esterror / 1e6,
        kernel_state=state,
        unsync_flag=bool(timex.status & STA_UNSYNC),
    )
