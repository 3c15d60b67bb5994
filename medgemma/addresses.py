"""Which IP addresses an image fetch may connect to, from an explicit table of refused blocks.

Python's ``ipaddress`` flags (``is_private``, ``is_global``, ...) change between patch
releases, and the 3.11.7 the worker runs predates the 2024 fixes: ``fec0::/10`` counts as
global there and NAT64 addresses are not unwrapped. So the worker carries its own table,
transcribed on 2026-12-04 from IANA's registries (entries through the 2025 additions
``100:0:0:1::/64``, RFC 9780, and ``2001:1::3/128``, RFC 9665):

- IPv4 Special-Purpose Address Registry,
  https://www.iana.org/assignments/iana-ipv4-special-registry/
- IPv6 Special-Purpose Address Registry,
  https://www.iana.org/assignments/iana-ipv6-special-registry/
- IPv4 Address Space Registry (224.0.0.0/4 multicast, 240.0.0.0/4 future use),
  https://www.iana.org/assignments/ipv4-address-space/
- IPv6 Address Space registry (all but 2000::/3 is reserved, unique-local, link-local,
  site-local or multicast), https://www.iana.org/assignments/ipv6-address-space/

Every block is refused, the ones the registries call globally reachable too (PCP and TURN
anycast, AS112, AMT, NAT64): no image server lives there. IPv6 forms that carry an IPv4
address (IPv4-mapped, NAT64, 6to4, IPv4-compatible, Teredo) are unwrapped and the IPv4
address is judged on its own as well, so allow-listing a NAT64 prefix for an IPv6-only
network still refuses a private or metadata address inside it. No heavy imports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from medgemma.settings import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Never fetched, whatever IMAGE_URL_ALLOW_ADDRESSES says: instance credentials live here.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS VPC DNS
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",  # AWS VPC DNS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
        "168.63.129.16",  # Azure WireServer: a public address, so no block below covers it
    )
)


@dataclass(frozen=True)
class Block:
    """One refused block, and what its addresses are in an error message's words."""

    network: IPNetwork
    kind: str

    @property
    def reason(self) -> str:
        return f"{self.kind} ({self.network})"


def _blocks(*rows: tuple[str, str]) -> tuple[Block, ...]:
    return tuple(Block(ipaddress.ip_network(network), kind) for network, kind in rows)


PRIVATE = "a private address"
RESERVED = "a reserved address"
DOCUMENTATION = "a documentation address"
PROTOCOL = "an IETF protocol address"

DENIED = _blocks(
    # IPv4 Special-Purpose Address Registry
    ("0.0.0.0/8", "a 'this network' address"),  # RFC 791
    ("0.0.0.0/32", "an unspecified address"),  # RFC 1122
    ("10.0.0.0/8", PRIVATE),  # RFC 1918
    ("100.64.0.0/10", "a shared (CGNAT) address"),  # RFC 6598
    ("127.0.0.0/8", "a loopback address"),  # RFC 1122
    ("169.254.0.0/16", "a link-local address"),  # RFC 3927
    ("172.16.0.0/12", PRIVATE),  # RFC 1918
    ("192.0.0.0/24", PROTOCOL),  # RFC 6890
    ("192.0.0.0/29", "an IPv4 service continuity address"),  # RFC 7335 (DS-Lite)
    ("192.0.0.8/32", "the IPv4 dummy address"),  # RFC 7600
    ("192.0.0.9/32", "the PCP anycast address"),  # RFC 7723
    ("192.0.0.10/32", "the TURN anycast address"),  # RFC 8155
    ("192.0.0.170/32", "a NAT64/DNS64 discovery address"),  # RFC 7050
    ("192.0.0.171/32", "a NAT64/DNS64 discovery address"),  # RFC 7050
    ("192.0.2.0/24", DOCUMENTATION),  # RFC 5737 (TEST-NET-1)
    ("192.31.196.0/24", "an AS112 address"),  # RFC 7535
    ("192.52.193.0/24", "an AMT address"),  # RFC 7450
    ("192.88.99.0/24", "a deprecated 6to4 relay anycast address"),  # RFC 7526
    ("192.88.99.2/32", "the 6a44 relay anycast address"),  # RFC 6751
    ("192.168.0.0/16", PRIVATE),  # RFC 1918
    ("192.175.48.0/24", "an AS112 address"),  # RFC 7534
    ("198.18.0.0/15", "a benchmarking address"),  # RFC 2544
    ("198.51.100.0/24", DOCUMENTATION),  # RFC 5737 (TEST-NET-2)
    ("203.0.113.0/24", DOCUMENTATION),  # RFC 5737 (TEST-NET-3)
    ("240.0.0.0/4", RESERVED),  # RFC 1112
    ("255.255.255.255/32", "the limited broadcast address"),  # RFC 919
    # IPv4 Address Space Registry
    ("224.0.0.0/4", "a multicast address"),  # RFC 5771
    # IPv6 Special-Purpose Address Registry
    ("::/128", "an unspecified address"),  # RFC 4291
    ("::1/128", "a loopback address"),  # RFC 4291
    ("::ffff:0:0/96", "an IPv4-mapped address"),  # RFC 4291; judged by its IPv4 address (refusal)
    ("64:ff9b::/96", "a NAT64 address"),  # RFC 6052
    ("64:ff9b:1::/48", "a local-use NAT64 address"),  # RFC 8215
    ("100::/64", "a discard-only address"),  # RFC 6666
    ("100:0:0:1::/64", "a dummy address"),  # RFC 9780
    ("2001::/23", PROTOCOL),  # RFC 2928
    ("2001::/32", "a Teredo address"),  # RFC 4380
    ("2001:1::1/128", "the PCP anycast address"),  # RFC 7723
    ("2001:1::2/128", "the TURN anycast address"),  # RFC 8155
    ("2001:1::3/128", "the DNS-SD SRP anycast address"),  # RFC 9665
    ("2001:2::/48", "a benchmarking address"),  # RFC 5180
    ("2001:3::/32", "an AMT address"),  # RFC 7450
    ("2001:4:112::/48", "an AS112 address"),  # RFC 7535
    ("2001:10::/28", "a deprecated ORCHID address"),  # RFC 4843
    ("2001:20::/28", "an ORCHIDv2 address"),  # RFC 7343
    ("2001:30::/28", "a drone remote ID address"),  # RFC 9374
    ("2001:db8::/32", DOCUMENTATION),  # RFC 3849
    ("2002::/16", "a 6to4 address"),  # RFC 3056
    ("2620:4f:8000::/48", "an AS112 address"),  # RFC 7534
    ("3fff::/20", DOCUMENTATION),  # RFC 9637
    ("5f00::/16", "an SRv6 SID"),  # RFC 9602
    ("fc00::/7", PRIVATE),  # RFC 4193 (unique-local)
    ("fe80::/10", "a link-local address"),  # RFC 4291
    # IPv6 Address Space registry: all but 2000::/3 (global unicast)
    ("::/8", RESERVED),  # RFC 4291
    ("::/96", "a deprecated IPv4-compatible address"),  # RFC 4291
    ("100::/8", RESERVED),
    ("200::/7", RESERVED),  # RFC 4048
    ("400::/6", RESERVED),
    ("800::/5", RESERVED),
    ("1000::/4", RESERVED),
    ("4000::/3", RESERVED),
    ("6000::/3", RESERVED),
    ("8000::/3", RESERVED),
    ("a000::/3", RESERVED),
    ("c000::/3", RESERVED),
    ("e000::/4", RESERVED),
    ("f000::/5", RESERVED),
    ("f800::/6", RESERVED),
    ("fe00::/9", RESERVED),
    ("fec0::/10", "a deprecated site-local address"),  # RFC 3879
    ("ff00::/8", "a multicast address"),  # RFC 4291
)

#: IPv6 blocks whose last 32 bits are an IPv4 address (RFC 6052's /96 form for both NAT64 prefixes:
#: the only one the well-known prefix has; allow-list a local-use translator by its /96 prefix).
LAST_32_BITS_CARRIERS = _blocks(
    ("::ffff:0:0/96", "an IPv4-mapped address"),
    ("64:ff9b::/96", "a NAT64 address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("::/96", "an IPv4-compatible address"),
)


def refusal(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why the worker must not connect to ``address``, or None if it may.

    In order: a metadata address is refused whatever ``allowed`` says; an IPv4-mapped
    address is judged as its IPv4 address (the connection is IPv4); an address ``allowed``
    covers skips the table, and any other in it is refused by its most specific block;
    then every IPv4 address the IPv6 address carries must pass on its own, ``allowed``
    applying to it as it would to that IPv4 address.
    """
    allowed = tuple(allowed)
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(address.packed)  # without a %scope
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        inner = refusal(address.ipv4_mapped, allowed)
        return None if inner is None else f"an IPv4-mapped address of {inner}"
    if not any(address.version == network.version and address in network for network in allowed):
        block = denied_block(address)
        if block is not None:
            return block.reason
    if isinstance(address, ipaddress.IPv6Address):
        for form, ipv4 in carried_ipv4(address):
            inner = refusal(ipv4, allowed)
            if inner is not None:
                return f"{form} carrying {inner}"
    return None


def denied_block(address: IPAddress) -> Block | None:
    """The most specific block of the table that holds ``address``; None for a public address."""
    holding = [block for block in DENIED if block.network.version == address.version and address in block.network]
    return max(holding, key=lambda block: block.network.prefixlen, default=None)


def carried_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """Each IPv4 address an IPv6 one stands for, named by its form: a packet to it may reach that address."""
    if int(address) <= 1:  # :: and ::1 are themselves, not IPv4-compatible (RFC 4291, 2.5.5.1)
        return []
    carried = [
        (block.kind, ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        for block in LAST_32_BITS_CARRIERS
        if address in block.network
    ]
    if address.sixtofour is not None:  # 2002:AABB:CCDD::/48 is A.B.C.D's
        carried.append(("a 6to4 address", address.sixtofour))
    if address.teredo is not None:  # its server, and its client's (obfuscated) address
        carried.extend(("a Teredo address", ipv4) for ipv4 in address.teredo)
    return carried
