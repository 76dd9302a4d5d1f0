"""Where a webhook may go: no server-side request forgery into the cluster.

A tenant names a URL and the workers send to it, from inside the deployment; so a URL could aim
them at the database, Redis, a cloud metadata service (169.254.169.254) or the API itself. Hence
a URL must be http(s), its host is resolved, and every address it resolves to must be public:
loopback, private, link-local, multicast, reserved, shared (CGNAT) and unspecified addresses are
refused, IPv4 and IPv6 alike, and an IPv6 address that carries an IPv4 one (IPv4-mapped
::ffff:a.b.c.d, 6to4, Teredo, NAT64 64:ff9b::/96) is judged by the IPv4 address it carries.
An operator may allow non-public destinations (KDSERVE_WEBHOOK_ALLOW_PRIVATE, or named hosts and
CIDRs in KDSERVE_WEBHOOK_ALLOWED_NETWORKS); the service's own API port on this machine stays
refused whatever is allowed.

The check runs when an endpoint is created or its URL changed (422, param `url`) and again before
every attempt (the attempt is recorded as refused, nothing is sent), because what a name resolves
to can change after it was checked (DNS rebinding). For the same reason an attempt connects to the
address that was checked (`Destination.address`), not to whatever the name resolves to a moment
later: the request goes to that IP with the name in its Host header and TLS SNI.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from kdserve.service.settings import Settings

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = ipaddress.ip_network("64:ff9b::/96")
DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(ValueError):
    """A URL that a webhook may not use, and why (for the API's 422 or the attempt's record)."""


class Unresolvable(Refused):
    """A host that does not resolve now (refused at create; at delivery, tried again later)."""


@dataclass(frozen=True)
class Policy:
    """What an operator allows beyond public addresses, and the service's own address."""

    allow_private: bool = False
    allowed_hosts: frozenset[str] = frozenset()  # host names, lower case
    allowed_networks: tuple[Network, ...] = ()
    own_port: int | None = None  # the API's port on this machine: never a destination
    own_addresses: frozenset[str] = frozenset()  # this machine's addresses besides loopback and unspecified

    @classmethod
    def from_settings(cls, settings: Settings) -> "Policy":
        hosts, networks = set(), []
        for entry in (e.strip() for e in settings.webhook_allowed_networks.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(settings.webhook_allow_private, frozenset(hosts), tuple(networks), settings.port,
                   frozenset(_machine_addresses(settings.host)))


@dataclass(frozen=True)
class Destination:
    """A checked URL: the parts a request needs, and the checked address it must connect to."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA), for the Host header and SNI
    port: int
    address: IP

    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        target = parts.path or "/"
        return f"{self.scheme}://{literal}:{self.port}{target}" + (f"?{parts.query}" if parts.query else "")

    def host_header(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return shown if DEFAULT_PORTS[self.scheme] == self.port else f"{shown}:{self.port}"


Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:  # gaierror is an OSError
        raise Unresolvable(f"the host {host!r} does not resolve: {exc}") from None
    return list(dict.fromkeys(info[4][0].split("%")[0] for info in infos))  # no IPv6 zone ids


def check(url: str, policy: Policy, resolver: Resolver = resolve) -> Destination:
    """The URL's destination when a webhook may go there; Refused, saying why, when not."""
    scheme, host, port = parse(url)
    addresses = [ipaddress.ip_address(a) for a in resolver(host, port)]
    if not addresses:
        raise Unresolvable(f"the host {host!r} resolves to no address")
    for address in addresses:
        shown = host if str(address) == host else f"{host} ({address})"
        if port == policy.own_port and _is_own(address, policy):
            raise Refused(f"{shown} port {port} is this service's own API; webhooks never go there")
        if (why := refusal(address, host, policy)) is not None:
            raise Refused(f"{shown} is {why}; webhooks go only to public addresses unless an operator allows others "
                          "(KDSERVE_WEBHOOK_ALLOW_PRIVATE, KDSERVE_WEBHOOK_ALLOWED_NETWORKS)")
    return Destination(url, scheme, host, port, addresses[0])


def parse(url: str) -> tuple[str, str, int]:
    """scheme, ASCII host and port of an http(s) URL; Refused when it is not one."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise Refused("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a valid URL: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise Refused(f"the URL must be http:// or https://, not {parts.scheme + '://' if parts.scheme else url!r}")
    if not parts.hostname:
        raise Refused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("the URL must not hold credentials (user:password@); the signature tells the receiver it is "
                      "us, and a token can go in the path or query")
    try:
        host = parts.hostname.encode("idna").decode("ascii") if not _is_ip(parts.hostname) else parts.hostname
    except UnicodeError:
        raise Refused(f"{parts.hostname!r} is not a valid host name") from None
    return parts.scheme, host.rstrip("."), port or DEFAULT_PORTS[parts.scheme]


def refusal(address: IP, host: str, policy: Policy) -> str | None:
    """Why a webhook may not connect to address (named by host) under policy; None when it may."""
    why = non_public(address)
    if why is None or policy.allow_private or host.lower() in policy.allowed_hosts:
        return None
    if any(_inside(address, net) for net in policy.allowed_networks):
        return None
    return why


def non_public(address: IP) -> str | None:
    """What makes address not a public one ("a loopback address", …); None for a public address."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        why = non_public(embedded)
        return f"{why} ({embedded}, carried in an IPv6 address)" if why else None
    for test, what in (("is_unspecified", "the unspecified address"), ("is_loopback", "a loopback address"),
                       ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
                       ("is_reserved", "a reserved address"), ("is_private", "a private address")):
        if getattr(address, test):
            return what
    if not address.is_global:  # e.g. 100.64.0.0/10, shared address space (carrier-grade NAT)
        return "not a public address"
    return None


def embedded_ipv4(address: IP) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, Teredo's client, NAT64)."""
    if address.version == 4:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _inside(address: IP, network: Network) -> bool:
    candidates = [address] + ([embedded] if (embedded := embedded_ipv4(address)) is not None else [])
    return any(a.version == network.version and a in network for a in candidates)


def _is_own(address: IP, policy: Policy) -> bool:
    plain = embedded_ipv4(address) or address
    return plain.is_loopback or plain.is_unspecified or str(plain) in policy.own_addresses


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _machine_addresses(bind_host: str) -> set[str]:
    """This machine's addresses as its own name and the API's bind address resolve (best effort)."""
    found = set()
    for name in {socket.gethostname(), bind_host}:
        try:
            found |= {info[4][0].split("%")[0] for info in socket.getaddrinfo(name, None)}
        except (socket.gaierror, UnicodeError, OSError):
            continue
    return found
