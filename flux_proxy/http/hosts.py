"""``--no-intercept``: which CONNECT destinations are tunnelled instead of intercepted.

Entries follow the ``NO_PROXY`` conventions clients already use (curl, Go,
requests), so the same list can be handed to both:

- ``*`` matches every host;
- ``example.com`` matches it and every subdomain; ``.example.com`` and
  ``*.example.com`` mean the same (curl's and Go's readings agree on this);
- an IP address matches itself, a CIDR block (``10.0.0.0/8``, ``fd00::/8``)
  every address in it; ``[::1]`` may be bracketed;
- any entry may end in ``:PORT`` to match that port only.

Names are compared case-insensitively and without a trailing dot. A name is
never resolved: ``localhost`` does not match ``127.0.0.1``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def format_address(address: Any) -> str:
    """``host:port`` (``[v6]:port``) for a socket address tuple, "" when there is none."""
    if not address:
        return ""
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class _Rule:
    domain: str | None = None
    network: IPNetwork | None = None
    port: int | None = None
    everything: bool = False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6] or [v6]:port
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:  # name:port or v4:port; a bare v6 address has several colons
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


def _parse(entry: str) -> _Rule | None:
    text = entry.strip().lower()
    if not text:
        return None
    if text == "*":
        return _Rule(everything=True)
    host, port = _split_port(text)
    try:
        return _Rule(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        pass
    domain = host.removeprefix("*").lstrip(".").rstrip(".")
    if not domain:
        return None
    return _Rule(domain=domain, port=port)


def split_entries(values: Iterable[str]) -> list[str]:
    """Entries from repeated flags and comma- or space-separated lists (``NO_PROXY`` style)."""
    return [part for value in values for part in value.replace(",", " ").split()]


class HostMatcher:
    """Matches ``(host, port)`` against ``NO_PROXY``-style entries."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = split_entries(entries)
        rules = [r for r in (_parse(e) for e in self.entries) if r is not None]
        self._everything = any(r.everything for r in rules)
        self._rules = tuple(r for r in rules if not r.everything)

    @property
    def empty(self) -> bool:
        return not self._everything and not self._rules

    def matches(self, host: str, port: int) -> bool:
        if self._everything:
            return True
        name = host.strip("[]").lower().rstrip(".")
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                name
            )
        except ValueError:
            address = None
        for rule in self._rules:
            if rule.port is not None and rule.port != port:
                continue
            if rule.network is not None:
                if address is not None and address in rule.network:
                    return True
            elif rule.domain is not None and (
                name == rule.domain or name.endswith("." + rule.domain)
            ):
                return True
        return False
