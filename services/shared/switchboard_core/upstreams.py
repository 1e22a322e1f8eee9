"""Where Switchboard may send a provider request: the address policy for upstream base URLs.

Whoever can write the catalog chooses where routers send tenants' prompts, with
Switchboard's provider credentials attached. So the catalog checks a provider's ``base_url``
with :class:`UpstreamPolicy` when it is written (``UpsertProvider`` and the seed), and the
router checks again when it connects: the host of every request it sends, and every address
a host name resolves to (a name that answers 127.0.0.1 later, DNS rebinding, is refused
then). Both read the same allow-list.

Always refused, whatever the allow-list (malformed, or read differently by different
parsers):

- schemes other than ``https`` and ``http``; credentials in the URL (``user:pass@``);
  anything but printable ASCII, whitespace and backslashes; no host; port 0;
- IPv4 written any way but a canonical dotted quad (four decimal numbers, no leading zeros):
  ``2130706433``, ``0x7f000001``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``. A host whose last
  label is numeric (``[0-9]+`` or ``0x[0-9a-f]*``), or that ``socket.inet_aton`` reads, is an
  IPv4 address to URL parsers and resolvers, so it must be canonical;
- IPv6 zone ids (``[fe80::1%25eth0]``); host names ending with a dot; host names that are not
  letters, digits and hyphens (internationalised names go in their ``xn--`` form).

Refused unless the host is allow-listed:

- ``http`` (prompts and keys in clear text): a local vLLM, Ollama or the demo upstream need
  their host on the allow-list;
- IP addresses that are not public: loopback, private (RFC 1918, CGNAT 100.64.0.0/10, IPv6
  ULA fc00::/7), link-local (169.254.0.0/16, fe80::/10), site-local, multicast, unspecified
  (0.0.0.0, ::), reserved, broadcast, documentation and benchmarking ranges, Teredo and
  local-use NAT64. An IPv6 address that embeds an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``,
  IPv4-compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) is judged by
  the IPv4 address it reaches;
- cloud metadata services: the addresses in :data:`METADATA_ADDRESSES` (169.254.169.254,
  169.254.170.2, fd00:ec2::254, 100.100.100.200) and the names in :data:`METADATA_NAMES`;
- names that only ever mean something inside a private network: ``localhost`` and
  ``*.localhost`` (RFC 6761); single-label names (``metadata``, ``vllm``: resolved through
  search domains); and the private-use suffixes in :data:`INTERNAL_SUFFIXES`. ``.internal``
  is among them: ICANN reserved it in 2024 for private use, so it is never delegated in the
  public DNS and every name under it is internal by definition (GCP's
  ``metadata.google.internal``, EC2's ``*.ec2.internal``).

At connect time every address a host name resolves to must pass the same address rules,
unless the name itself is allow-listed.

``SWITCHBOARD_UPSTREAM_ALLOWLIST`` (catalog and router; default empty): comma-separated
entries; spaces around an entry and empty entries are ignored; case does not matter. An entry
is one of

- a host name (``vllm``, ``ollama.lan``, ``localhost``): exactly that name, on any port, and
  every address it resolves to. No wildcards.
- an IP address (``127.0.0.1``, ``::1`` or ``[::1]``; IPv4 as a canonical dotted quad):
  that address, on any port, written as the URL's host or resolved from a name.
- a CIDR block (``10.0.0.0/8``, ``fd00::/8``; no host bits set): every address in it, except
  the cloud metadata addresses, which only an entry naming the address itself allows.

No ports, schemes or paths. An allow-listed host may also use ``http``. Example:
``SWITCHBOARD_UPSTREAM_ALLOWLIST=127.0.0.1,vllm,10.20.0.0/16``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from switchboard_core.config import EnvReader

ALLOWLIST_VARIABLE = "SWITCHBOARD_UPSTREAM_ALLOWLIST"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# AWS, GCP, Azure and OCI (169.254.169.254), ECS task metadata, AWS over IPv6, Alibaba Cloud.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog"})
# Private-use names: RFC 6761 (.localhost), ICANN 2024 (.internal), RFC 6762 (.local and the
# names its appendix G lists as in private use), RFC 8375 (.home.arpa), and .localdomain.
INTERNAL_SUFFIXES = (
    ".localhost",
    ".internal",
    ".local",
    ".localdomain",
    ".home.arpa",
    ".intranet",
    ".private",
    ".corp",
    ".home",
    ".lan",
)

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_TEREDO = ipaddress.IPv6Network("2001::/32")
# Verdicts :meth:`UpstreamPolicy.host_problem` remembers: a router sends to a handful of
# provider hosts, so this only bounds the memory a stream of odd hosts could take.
HOST_VERDICTS_MAX = 4096


class AllowlistError(ValueError):
    """Entries of an allow-list that are not a host name, an IP address or a CIDR block."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class UpstreamUrl:
    scheme: str  # "http" or "https"
    host: str  # lower case; an IPv6 address without brackets, compressed
    port: int | None


def split_base_url(url: str) -> UpstreamUrl:
    """The scheme, host and port of ``url``, or ``ValueError`` saying why it is malformed or
    ambiguous (refused whatever the allow-list)."""
    if not url:
        raise ValueError("required")
    if not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
        raise ValueError(
            "must be printable ASCII without spaces or backslashes"
            " (internationalised host names in their xn-- form)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL (check the brackets and the port)") from None
    if parts.scheme not in ("https", "http"):
        raise ValueError("must be an https URL (http only for allow-listed hosts)")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials (user:pass@): the router sends the key")
    if port == 0:
        raise ValueError("port 0 is not a port")
    return UpstreamUrl(parts.scheme, normalize_host(parts.hostname or ""), port)


def normalize_host(host: str) -> str:
    """``host`` (as a URL carries it, an IPv6 address without brackets) in lower case, or
    ``ValueError`` when it is not a host name, a canonical IPv4 or a valid IPv6 address."""
    host = host.lower()
    if not host:
        raise ValueError("has no host")
    if "%" in host:
        raise ValueError("IPv6 zone ids (%...) are not allowed")
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    if host.endswith("."):
        raise ValueError(f"{host!r}: write the host name without the trailing dot")
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]) or _inet_aton_reads(host):
        if not _canonical_ipv4(host):
            raise ValueError(
                f"{host!r} is not a canonical IPv4 address:"
                " write four decimal numbers without leading zeros, such as 192.0.2.10"
            )
        return host
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            f"{host!r} is not a valid host name"
            " (letters, digits and hyphens; xn-- for internationalised names)"
        )
    return host


def parse_host_entry(entry: str) -> str:
    """A host name or IP address as an operator lists it (an IPv6 address with or without
    brackets), normalized; ``ValueError`` when it carries a scheme, path, port or wildcard."""
    entry = entry.strip().lower()
    if "://" in entry or "/" in entry:
        raise ValueError("write the host alone, without a scheme or path")
    if "*" in entry:
        raise ValueError("wildcards are not supported: list each host name")
    if entry.startswith("[") and entry.endswith("]"):
        entry = entry[1:-1]
    if ":" in entry and _ip_or_none(entry) is None:
        raise ValueError("not a host name or IP address (no ports: an entry covers every port)")
    return normalize_host(entry)


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address, as a noun phrase ("a loopback address"), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "a scoped (zone id) IPv6 address"
        if ip in _TEREDO:
            return "a Teredo address"
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            problem = address_problem(embedded)
            return None if problem is None else f"a form of {embedded}, {problem}"
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata service"
    if ip == _BROADCAST:
        return "the broadcast address"
    for refused, what in (
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a site-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip in _CGNAT, "a shared (CGNAT) address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    ):
        if refused:
            return what
    return None


class UpstreamPolicy:
    """The address policy with an allow-list (see the module docstring for both).

    ``UpstreamPolicy()`` allows nothing beyond public https hosts. Raises
    :class:`AllowlistError` naming every bad entry. The allow-list is fixed once built, so
    a verdict on a host never changes and :meth:`host_problem` remembers it.
    """

    __slots__ = ("_addresses", "_host_verdicts", "_names", "_networks", "entries")

    def __init__(self, allowlist: Iterable[str] = ()) -> None:
        self._host_verdicts = functools.lru_cache(maxsize=HOST_VERDICTS_MAX)(self._judge_host)
        self._names: set[str] = set()
        self._addresses: set[IPAddress] = set()
        self._networks: list[IPNetwork] = []
        entries: list[str] = []
        problems: list[str] = []
        for raw in allowlist:
            entry = raw.strip()
            if not entry:
                continue
            try:
                self._add(entry.lower())
            except ValueError as error:
                problems.append(f"{entry!r}: {error}")
            entries.append(entry)
        if problems:
            raise AllowlistError(problems)
        self.entries = tuple(entries)

    def __repr__(self) -> str:
        return f"UpstreamPolicy({list(self.entries)!r})"

    def base_url_problem(self, url: str) -> str | None:
        """Why a provider may not have ``url`` as its base URL, or None when it may."""
        try:
            parts = split_base_url(url)
        except ValueError as error:
            return str(error)
        return self.host_problem(parts.scheme, parts.host)

    def host_problem(self, scheme: str, host: str) -> str | None:
        """Why the router may not send a request to ``host`` over ``scheme``, or None.
        ``host`` as a URL carries it (IPv6 without brackets).

        The router asks before every provider request, so verdicts are remembered: a known
        host costs a cache lookup (0.2 us) instead of parsing it again (1.6 to 6.4 us, most
        for an IP literal). At most :data:`HOST_VERDICTS_MAX` are kept, least recently used
        out first."""
        return self._host_verdicts(scheme, host)

    def _judge_host(self, scheme: str, host: str) -> str | None:
        try:
            host = normalize_host(host)
        except ValueError as error:
            return str(error)
        if scheme not in ("https", "http"):
            return f"the scheme {scheme!r} is not allowed: use https"
        if self.host_listed(host):
            return None
        why = _host_class_problem(host)
        if why is None and scheme == "http":
            why = "plain http would carry prompts and keys in clear text: use https"
        if why is None:
            return None
        return f"{why}; to allow it, add {host} to {ALLOWLIST_VARIABLE} (catalog and router)"

    def address_problem(self, host: str, address: str | IPAddress) -> str | None:
        """Why the router may not connect to ``address``, which ``host`` resolved to, or None."""
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return f"{host} resolved to {address!r}, which is not an IP address"
        if host.lower() in self._names or self._ip_listed(ip):
            return None
        why = address_problem(ip)
        if why is None:
            return None
        return f"{host} resolved to {ip}, {why}; to allow it, add {host} to {ALLOWLIST_VARIABLE}"

    def address_allowed(self, host: str, address: str | IPAddress) -> bool:
        return self.address_problem(host, address) is None

    def host_listed(self, host: str) -> bool:
        """Whether ``host`` (normalized, see :func:`normalize_host`) is on the allow-list."""
        if host in self._names:
            return True
        ip = _ip_or_none(host)
        return ip is not None and self._ip_listed(ip)

    def _ip_listed(self, ip: IPAddress) -> bool:
        if ip in self._addresses:
            return True
        if ip in METADATA_ADDRESSES:  # only an entry naming it allows it
            return False
        return any(ip in network for network in self._networks)

    def _add(self, entry: str) -> None:
        if "/" in entry and _ip_or_none(entry.split("/", 1)[0]) is not None:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=True))
            except ValueError:
                raise ValueError("not a CIDR block such as 10.0.0.0/8 (no host bits set)") from None
            return
        host = parse_host_entry(entry)
        ip = _ip_or_none(host)
        if ip is None:
            self._names.add(host)
        else:
            self._addresses.add(ip)


STRICT = UpstreamPolicy()


def read_upstream_policy(reader: EnvReader) -> UpstreamPolicy:
    """The policy of ``SWITCHBOARD_UPSTREAM_ALLOWLIST``; bad entries become config problems."""
    try:
        return UpstreamPolicy(reader.csv(ALLOWLIST_VARIABLE))
    except AllowlistError as error:
        reader.problems.extend(f"{ALLOWLIST_VARIABLE}: {problem}" for problem in error.problems)
        return STRICT


def _host_class_problem(host: str) -> str | None:
    ip = _ip_or_none(host)
    if ip is not None:
        why = address_problem(ip)
        return None if why is None else f"{host} is {why}"
    if host in METADATA_NAMES:
        return f"{host} is a cloud metadata service"
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is this machine"
    if "." not in host:
        return f"{host} is a single-label name, which only resolves inside a private network"
    for suffix in INTERNAL_SUFFIXES:
        if host.endswith(suffix):
            return f"{host} is under {suffix}, a private-use domain"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _ip_or_none(host: str) -> IPAddress | None:
    if ":" not in host and not host[-1:].isdigit():  # a host name: skip the costly parse
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _canonical_ipv4(host: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def _inet_aton_reads(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True
