"""Who a caller is: the address of its connection, or, behind one of our proxies, the
address that proxy put last in x-forwarded-for; and the key per-address limits count."""

from __future__ import annotations

import ipaddress

from securenow.server.transport.interceptor import LOOPBACK_NETWORKS, address_key, client_address

XFF = (("x-forwarded-for", "198.51.100.9, 203.0.113.7"),)
ENVOY_NET = (ipaddress.ip_network("10.8.0.0/16"),)


def test_a_direct_caller_is_its_connection_whatever_it_claims() -> None:
    assert client_address("ipv4:203.0.113.50:40000", XFF) == ("ipv4:203.0.113.50:40000", None)
    assert client_address("ipv6:[2001:db8::5]:40000", XFF) == ("ipv6:[2001:db8::5]:40000", None)


def test_a_trusted_proxy_names_the_caller_in_its_last_hop() -> None:
    assert client_address("ipv4:127.0.0.1:5000", XFF) == ("203.0.113.7", "ipv4:127.0.0.1:5000")
    assert client_address("ipv6:[::1]:5000", XFF, LOOPBACK_NETWORKS) == ("203.0.113.7", "ipv6:[::1]:5000")
    assert client_address("ipv6:[::ffff:127.0.0.1]:5000", XFF) == ("203.0.113.7", "ipv6:[::ffff:127.0.0.1]:5000")
    # Envoy on its own network: trusted when configured, not otherwise.
    assert client_address("ipv4:10.8.0.3:5000", XFF, ENVOY_NET) == ("203.0.113.7", "ipv4:10.8.0.3:5000")
    assert client_address("ipv4:10.8.0.3:5000", XFF) == ("ipv4:10.8.0.3:5000", None)
    assert client_address("ipv4:127.0.0.1:5000", XFF, ENVOY_NET) == ("ipv4:127.0.0.1:5000", None)


def test_a_forwarded_value_that_is_no_address_is_ignored() -> None:
    bad = (("x-forwarded-for", "unknown"),)
    assert client_address("ipv4:127.0.0.1:5000", bad) == ("ipv4:127.0.0.1:5000", None)
    assert client_address("unix:/run/securenow.sock", XFF) == ("unix:/run/securenow.sock", None)


def test_limits_count_an_ipv4_address_or_an_ipv6_slash_64() -> None:
    assert address_key("ipv4:203.0.113.50:40000") == "203.0.113.50"
    assert address_key("203.0.113.7") == "203.0.113.7"
    # One subscriber's /64: rotating addresses inside it does not buy more attempts.
    assert address_key("ipv6:[2001:db8:1:2::5]:40000") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("ipv6:[2001:db8:1:3::5]:40000") == "2001:db8:1:3::/64"
    assert address_key("ipv6:[::ffff:198.51.100.9]:1") == "198.51.100.9"
