"""The address table image fetches are vetted by: every IANA special-purpose block refused,
IPv4 carried inside IPv6 unwrapped, and the allow-list's limits. Pure functions, no network."""

from __future__ import annotations

import ipaddress

import pytest

from medgemma.addresses import DENIED, METADATA_ADDRESSES, Block, IPAddress, carried_ipv4, denied_block, refusal

#: The blocks the IANA registries name (and 224/4, fec0::/10, ff00::/8 from the address-space ones).
REGISTRY_BLOCKS = """
    0.0.0.0/8 0.0.0.0/32 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24
    192.0.0.0/29 192.0.0.8/32 192.0.0.9/32 192.0.0.10/32 192.0.0.170/32 192.0.0.171/32 192.0.2.0/24
    192.31.196.0/24 192.52.193.0/24 192.88.99.0/24 192.88.99.2/32 192.168.0.0/16 192.175.48.0/24
    198.18.0.0/15 198.51.100.0/24 203.0.113.0/24 224.0.0.0/4 240.0.0.0/4 255.255.255.255/32
    ::/128 ::1/128 ::ffff:0:0/96 64:ff9b::/96 64:ff9b:1::/48 100::/64 100:0:0:1::/64 2001::/23 2001::/32
    2001:1::1/128 2001:1::2/128 2001:1::3/128 2001:2::/48 2001:3::/32 2001:4:112::/48 2001:10::/28
    2001:20::/28 2001:30::/28 2001:db8::/32 2002::/16 2620:4f:8000::/48 3fff::/20 5f00::/16 fc00::/7
    fe80::/10 fec0::/10 ff00::/8
""".split()

#: Just outside the blocks, and well-known public servers: fetched.
PUBLIC = """
    1.0.0.1 8.8.8.8 9.255.255.255 11.0.0.0 93.184.216.34 100.63.255.255 100.128.0.0 126.255.255.255 128.0.0.0
    169.253.255.255 169.255.0.0 172.15.255.255 172.32.0.0 192.0.1.255 192.0.3.0 192.31.195.255 192.31.197.0
    192.52.192.255 192.52.194.0 192.88.98.255 192.88.100.0 192.167.255.255 192.169.0.0 192.175.47.255
    192.175.49.0 198.17.255.255 198.20.0.0 198.51.99.255 198.51.101.0 203.0.112.255 203.0.114.0
    223.255.255.255 168.63.129.15
    2000::1 2001:200::1 2001:4860:4860::8888 2001:db7:ffff::1 2001:db9::1 2003::1 2606:4700:4700::1111
    2606:2800:220:1:248:1893:25c8:1946 2620:4f:7fff::1 2620:4f:8001::1 3ffe::1 3fff:1000::1 3fff:ffff::1
""".split()


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def inside(block: Block) -> IPAddress:
    """An address of ``block`` that no more specific block holds (its last, first or middle one)."""
    network = block.network
    first, size = int(network.network_address), network.num_addresses
    for candidate in (first + size - 1, first + 1, first + size // 2, first):
        address = ipaddress.ip_address(candidate) if network.version == 4 else ipaddress.IPv6Address(candidate)
        if address in network and denied_block(address) == block:
            return address
    raise AssertionError(f"every address of {network} is in a more specific block")


def test_the_table_holds_every_registry_block_once():
    networks = [block.network for block in DENIED]
    assert len(set(networks)) == len(networks)
    assert {ipaddress.ip_network(block) for block in REGISTRY_BLOCKS} <= set(networks)


@pytest.mark.parametrize("block", DENIED, ids=lambda block: str(block.network))
def test_every_block_is_refused_edge_to_edge(block):
    network = block.network
    for address in (network.network_address, network.broadcast_address, inside(block)):
        assert refusal(address) is not None, address
    if block.kind == "an IPv4-mapped address":  # judged by the IPv4 address it maps
        assert refusal(inside(block)).startswith("an IPv4-mapped address of ")
    else:
        assert refusal(inside(block)) == block.reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert refusal(ip(address)) is None
    if ip(address).version == 4:
        assert refusal(ip(f"::ffff:{address}")) is None  # IPv4-mapped: the same address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("fec0::1", "a deprecated site-local address (fec0::/10)"),  # Python 3.11.7: is_global
        ("3fff::1", "a documentation address (3fff::/20)"),  # Python 3.11.7: is_global
        ("5f00::1", "an SRv6 SID (5f00::/16)"),
        ("2002:808:808::1", "a 6to4 address (2002::/16)"),  # Python 3.11.7: is_global
        ("192.88.99.2", "the 6a44 relay anycast address (192.88.99.2/32)"),  # Python 3.11.7: is_global
        ("192.0.0.9", "the PCP anycast address (192.0.0.9/32)"),  # globally reachable, still refused
        ("4000::1", "a reserved address (4000::/3)"),
        ("::8.8.8.8", "a deprecated IPv4-compatible address (::/96)"),
        ("fe80::1%eth0", "a link-local address (fe80::/10)"),  # a scope id changes nothing
        ("168.63.129.16", "a cloud metadata address"),  # Azure's WireServer is a public address
    ],
)
def test_blocks_python_3_11_7_lets_through_are_refused(address, reason):
    assert refusal(ip(address)) == reason


def test_ipaddress_flags_are_not_consulted(monkeypatch):
    """The answers come from the table: flags that call everything public change nothing."""
    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        for flag in ("is_private", "is_reserved", "is_loopback", "is_link_local", "is_multicast", "is_unspecified"):
            monkeypatch.setattr(cls, flag, property(lambda self: False))
        monkeypatch.setattr(cls, "is_global", property(lambda self: True))
    assert refusal(ip("10.0.0.1")) == "a private address (10.0.0.0/8)"
    assert refusal(ip("fec0::1")) == "a deprecated site-local address (fec0::/10)"


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("::ffff:10.0.0.7", [("an IPv4-mapped address", "10.0.0.7")]),
        ("64:ff9b::a9fe:a9fe", [("a NAT64 address", "169.254.169.254")]),
        ("64:ff9b:1:ab::808:808", [("a local-use NAT64 address", "8.8.8.8")]),
        ("2002:c0a8:101::1", [("a 6to4 address", "192.168.1.1")]),
        ("::10.0.0.7", [("an IPv4-compatible address", "10.0.0.7")]),
        # RFC 4380's example: server 65.54.227.120, client 192.0.2.45 (stored inverted)
        (
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            [("a Teredo address", "65.54.227.120"), ("a Teredo address", "192.0.2.45")],
        ),
        ("::", []),  # itself, not 0.0.0.0
        ("::1", []),  # itself, not 0.0.0.1
        ("2606:4700:4700::1111", []),
    ],
)
def test_ipv4_carried_in_ipv6_is_unwrapped(address, carried):
    assert [(form, str(ipv4)) for form, ipv4 in carried_ipv4(ipaddress.IPv6Address(address))] == carried


# ---- the allow-list ---------------------------------------------------------------------------

NAT64 = ipaddress.ip_network("64:ff9b::/96")


def test_an_allowed_network_skips_the_table():
    assert refusal(ip("10.1.2.3"), [ipaddress.ip_network("10.1.0.0/16")]) is None
    assert refusal(ip("10.2.0.1"), [ipaddress.ip_network("10.1.0.0/16")]) == "a private address (10.0.0.0/8)"
    assert refusal(ip("::1"), [ipaddress.ip_network("::1/128")]) is None  # not unwrapped as ::0.0.0.1


def test_metadata_addresses_are_refused_whatever_is_allowed():
    everything = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    for address in METADATA_ADDRESSES:
        assert refusal(address, everything) == "a cloud metadata address"
        if address.version == 4:
            for wrapped in (f"::ffff:{address}", f"64:ff9b::{address}", f"64:ff9b:1::{address}"):
                assert "a cloud metadata address" in refusal(ip(wrapped), everything), wrapped


def test_an_allowed_nat64_prefix_reaches_public_ipv4_only():
    assert refusal(ip("64:ff9b::808:808")) == "a NAT64 address (64:ff9b::/96)"  # not without the allow-list
    assert refusal(ip("64:ff9b::808:808"), [NAT64]) is None
    assert refusal(ip("64:ff9b::a9fe:a9fe"), [NAT64]) == "a NAT64 address carrying a cloud metadata address"
    assert refusal(ip("64:ff9b::a00:7"), [NAT64]) == "a NAT64 address carrying a private address (10.0.0.0/8)"
    assert refusal(ip("64:ff9b::7f00:1"), [NAT64]) == "a NAT64 address carrying a loopback address (127.0.0.0/8)"
    assert refusal(ip("64:ff9b::c0a8:1"), [NAT64]) == "a NAT64 address carrying a private address (192.168.0.0/16)"


def test_the_carried_ipv4_address_is_judged_as_if_it_stood_alone():
    """The allow-list applies to it as it would to that IPv4 address: 10/8 allowed, 10.0.0.7 passes."""
    private = ipaddress.ip_network("10.0.0.0/8")
    assert refusal(ip("64:ff9b::a00:7"), [NAT64, private]) is None
    assert refusal(ip("::ffff:10.0.0.7"), [private]) is None
    assert refusal(ip("2002:a00:7::1"), [ipaddress.ip_network("2002::/16")]) == (
        "a 6to4 address carrying a private address (10.0.0.0/8)"
    )
    assert refusal(ip("2002:808:808::1"), [ipaddress.ip_network("2002::/16")]) is None
