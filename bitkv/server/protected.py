"""Protected mode, as Redis has it: no unauthenticated clients from outside this machine.

A server without a password answers only loopback clients unless protected mode is turned
off explicitly (``--protected-mode no``). ``bitkv serve`` checks twice: at startup it refuses
to listen on a non-loopback address without a password (a clear error beats a server nobody
can use), and each connection from a non-loopback peer is refused while no password is set
(``CONFIG SET requirepass ""`` at run time cannot open the door either).
"""

from __future__ import annotations

import ipaddress

# Redis's own words, so that clients and operators recognise it.
DENIED = (b"-DENIED Redis is running in protected mode because protected mode is enabled and "
          b"no password is set for the default user. In this mode connections are only "
          b"accepted from the loopback interface. Set a password (--requirepass, or CONFIG "
          b"SET requirepass from a loopback client) or disable protected mode "
          b"(--protected-mode no).\r\n")


def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1, ::ffff:127.x) or ``localhost``.
    Any other name counts as not loopback: a name is resolved only when it is bound."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_bind(hosts: tuple[str, ...], has_password: bool, protected: bool) -> None:
    """Raise ValueError if protected mode forbids listening on ``hosts``."""
    if not protected or has_password:
        return
    exposed = [h for h in hosts if not is_loopback(h)]
    if exposed:
        raise ValueError(
            f"protected mode: refusing to listen on {', '.join(exposed)} without a password; "
            "set --requirepass (or BITKV_REQUIREPASS) so that clients must AUTH, bind a "
            "loopback address, or pass --protected-mode no to accept unauthenticated clients "
            "from the network")


def check_metrics_bind(host: str, protected: bool) -> None:
    """Raise ValueError if protected mode forbids the metrics endpoint on ``host``: it has no
    password (``--requirepass`` does not cover it), so only loopback unless opted out."""
    if protected and not is_loopback(host):
        raise ValueError(
            f"protected mode: refusing to serve metrics on {host}: the metrics endpoint has "
            "no password (--requirepass does not cover it); bind it to a loopback address, or "
            "pass --protected-mode no to expose it to the network")
