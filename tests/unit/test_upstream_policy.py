"""The upstream address policy (switchboard_core.upstreams): every address form an attacker
could use to reach an internal service is refused, and the allow-list lifts exactly what it
names."""

from __future__ import annotations

import json
import logging
from typing import cast

import aiohttp
import pytest
import yarl

from switchboard_catalog.config import packaged_seed_path
from switchboard_core import upstreams
from switchboard_core.config import ConfigError, EnvReader, Secret
from switchboard_core.upstreams import (
    ALLOWLIST_VARIABLE,
    STRICT,
    AllowlistError,
    UpstreamPolicy,
    read_upstream_policy,
    split_base_url,
)
from switchboard_router.providers.credentials import DECLARED_HOSTS, ProviderCredentials
from switchboard_router.providers.http import AddressPolicyMiddleware, AddressRefused

# An allow-list as broad as one can write: what stays refused under it is refused always.
EVERYTHING = UpstreamPolicy(
    ["0.0.0.0/0", "::/0", "127.0.0.1", "localhost", "api.openai.com", "169.254.169.254"]
)

ALWAYS_REFUSED = [
    # credentials in the URL, and the classic confusion of userinfo with the host
    "https://user:pass@api.openai.com/v1",
    "https://user@api.openai.com/v1",
    "https://api.openai.com@127.0.0.1/v1",
    "https://api.openai.com:443@127.0.0.1/v1",
    # schemes
    "ftp://api.openai.com/v1",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "api.openai.com/v1",
    "//api.openai.com/v1",
    # non-canonical IPv4: decimal, hex, octal, short forms, out of range
    "http://2130706433/v1",
    "http://0x7f000001/v1",
    "http://0x7f.1/v1",
    "http://0x7f.0.0.1/v1",
    "http://0177.0.0.1/v1",
    "http://017700000001/v1",
    "http://127.1/v1",
    "http://127.0.1/v1",
    "http://127.0.0.01/v1",
    "http://256.0.0.1/v1",
    "http://1.2.3.4.5/v1",
    "http://foo.123/v1",
    # trailing dots
    "https://api.openai.com./v1",
    "http://127.0.0.1./v1",
    "http://localhost./v1",
    # zone ids, broken brackets, ports
    "http://[fe80::1%25eth0]/v1",
    "http://[::1/v1",
    "https://api.openai.com:0/v1",
    "https://api.openai.com:99999/v1",
    "https:///v1",
    # characters parsers disagree on; unicode that normalizes to an address
    "https://api.openai.com\\@127.0.0.1/v1",
    "https://api.openai.com /v1",
    "https://api.openai.com\t/v1",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/v1",  # fullwidth digits: 127.0.0.1
    "https://\uff41\uff50\uff49.openai.com/v1",  # fullwidth "api"
    "https://api_openai.com/v1",
    "https://-api.openai.com/v1",
]


@pytest.mark.parametrize("url", ALWAYS_REFUSED)
def test_malformed_and_ambiguous_urls_are_refused_whatever_the_allowlist(url: str) -> None:
    assert STRICT.base_url_problem(url) is not None
    assert EVERYTHING.base_url_problem(url) is not None


# (URL, the allow-list entry that lifts the refusal)
REFUSED_UNLESS_LISTED = [
    # loopback
    ("http://127.0.0.1:8088/v1", "127.0.0.1"),
    ("https://127.0.0.1/v1", "127.0.0.1"),
    ("https://127.9.8.7/v1", "127.0.0.0/8"),
    ("http://[::1]:8000/v1", "::1"),
    ("http://[::1]:8000/v1", "[::1]"),
    # private: RFC 1918, CGNAT, IPv6 ULA
    ("https://10.1.2.3/v1", "10.0.0.0/8"),
    ("https://172.16.5.4/v1", "172.16.0.0/12"),
    ("https://192.168.1.10/v1", "192.168.1.10"),
    ("https://100.64.0.1/v1", "100.64.0.0/10"),
    ("https://[fd12:3456::1]/v1", "fd00::/8"),
    # link-local, site-local
    ("https://169.254.1.1/v1", "169.254.0.0/16"),
    ("https://[fe80::1]/v1", "fe80::/10"),
    ("https://[fec0::1]/v1", "fec0::/10"),
    # multicast, unspecified, reserved, broadcast, documentation, benchmarking
    ("https://224.0.0.1/v1", "224.0.0.0/4"),
    ("https://[ff02::1]/v1", "ff00::/8"),
    ("https://[ff0e::1]/v1", "ff0e::1"),
    ("http://0.0.0.0:8000/v1", "0.0.0.0"),
    ("http://[::]:8000/v1", "::"),
    ("https://240.0.0.1/v1", "240.0.0.0/4"),
    ("https://255.255.255.255/v1", "255.255.255.255"),
    ("https://192.0.2.1/v1", "192.0.2.0/24"),
    ("https://198.18.0.1/v1", "198.18.0.0/15"),
    ("https://[2001:db8::1]/v1", "2001:db8::/32"),
    # IPv6 forms of refused IPv4 addresses: mapped, compatible, 6to4, NAT64; Teredo
    ("https://[::ffff:127.0.0.1]/v1", "::ffff:127.0.0.1"),
    ("https://[::ffff:7f00:1]/v1", "::ffff:7f00:1"),
    ("https://[::ffff:169.254.169.254]/v1", "::ffff:a9fe:a9fe"),
    ("https://[::ffff:10.0.0.1]/v1", "::ffff:0:0/96"),
    ("https://[::127.0.0.1]/v1", "::127.0.0.1"),
    ("https://[2002:7f00:1::1]/v1", "2002::/16"),
    ("https://[2002:a9fe:a9fe::]/v1", "2002:a9fe:a9fe::"),
    ("https://[64:ff9b::7f00:1]/v1", "64:ff9b::/96"),
    ("https://[64:ff9b::10.0.0.1]/v1", "64:ff9b::a00:1"),
    ("https://[64:ff9b:1::1]/v1", "64:ff9b:1::/48"),
    ("https://[2001::1]/v1", "2001::/32"),
    # cloud metadata, by address and by name
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
    ("http://169.254.170.2/v2/credentials", "169.254.170.2"),
    ("http://[fd00:ec2::254]/latest", "fd00:ec2::254"),
    ("http://100.100.100.200/latest", "100.100.100.200"),
    ("http://metadata.google.internal/computeMetadata/v1", "metadata.google.internal"),
    ("http://metadata/computeMetadata/v1", "metadata"),
    ("https://metadata.goog/computeMetadata/v1", "metadata.goog"),
    # names that only mean something inside a private network
    ("http://localhost:11434/v1", "localhost"),
    ("https://LOCALHOST/v1", "localhost"),
    ("https://api.localhost/v1", "api.localhost"),
    ("http://vllm:8000/v1", "vllm"),
    ("https://ollama.internal/v1", "ollama.internal"),
    ("https://ip-10-0-0-1.ec2.internal/v1", "ip-10-0-0-1.ec2.internal"),
    ("https://printer.local/v1", "printer.local"),
    ("https://nas.home.arpa/v1", "nas.home.arpa"),
    ("https://box.lan/v1", "box.lan"),
    ("https://gpu.corp/v1", "gpu.corp"),
    # plain http to a public host
    ("http://api.openai.com/v1", "api.openai.com"),
    ("http://8.8.8.8/v1", "8.8.8.8"),
]


@pytest.mark.parametrize(("url", "entry"), REFUSED_UNLESS_LISTED)
def test_internal_addresses_are_refused_unless_listed(url: str, entry: str) -> None:
    problem = STRICT.base_url_problem(url)
    assert problem is not None
    assert ALLOWLIST_VARIABLE in problem  # the message says how to allow it
    assert UpstreamPolicy([entry]).base_url_problem(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://API.OpenAI.com/v1",
        "https://api.openai.com:8443/v1",
        "https://generativelanguage.googleapis.com/v1beta",
        "https://api.groq.com/openai/v1",
        "https://8.8.8.8/v1",
        "https://[2606:4700:4700::1111]/v1",
        "https://[::ffff:8.8.8.8]/v1",  # a form of a public address
        "https://[64:ff9b::808:808]/v1",  # NAT64 of a public address
        "https://xn--bcher-kva.example/v1",
        "https://1e100.net/v1",
    ],
)
def test_public_https_hosts_pass(url: str) -> None:
    assert STRICT.base_url_problem(url) is None


def test_a_cidr_entry_never_covers_a_metadata_address() -> None:
    policy = UpstreamPolicy(["169.254.0.0/16", "fd00::/8", "100.64.0.0/10"])
    assert policy.base_url_problem("https://169.254.1.1/v1") is None
    for url in (
        "https://169.254.169.254/v1",
        "https://[fd00:ec2::254]/v1",
        "https://100.100.100.200/v1",
    ):
        problem = policy.base_url_problem(url)
        assert problem is not None and "metadata" in problem
    assert not policy.address_allowed("api.example.com", "169.254.169.254")


def test_messages_say_what_is_wrong_and_how_to_allow_it() -> None:
    assert STRICT.base_url_problem("http://127.0.0.1:8088/v1") == (
        "127.0.0.1 is a loopback address; to allow it, add 127.0.0.1 to"
        " SWITCHBOARD_UPSTREAM_ALLOWLIST (catalog and router)"
    )
    problem = STRICT.base_url_problem("http://169.254.169.254/")
    assert problem is not None and "cloud metadata" in problem
    problem = STRICT.base_url_problem("https://0x7f.1/v1")
    assert problem is not None and "not a canonical IPv4 address" in problem
    problem = STRICT.base_url_problem("https://k:hunter2@api.openai.com/v1")
    assert problem is not None and "credentials" in problem and "hunter2" not in problem


# Connect time: the addresses a name resolves to.
@pytest.mark.parametrize(
    ("allowlist", "host", "address", "allowed"),
    [
        ([], "api.example.com", "127.0.0.1", False),
        ([], "api.example.com", "10.0.0.7", False),
        ([], "api.example.com", "100.64.3.2", False),
        ([], "api.example.com", "169.254.169.254", False),
        ([], "api.example.com", "fd00:ec2::254", False),
        ([], "api.example.com", "::1", False),
        ([], "api.example.com", "::ffff:127.0.0.1", False),
        ([], "api.example.com", "64:ff9b::a9fe:a9fe", False),
        ([], "api.example.com", "fe80::1%eth0", False),
        ([], "api.example.com", "0.0.0.0", False),
        ([], "api.example.com", "not an address", False),
        ([], "api.example.com", "8.8.8.8", True),
        ([], "api.example.com", "2606:4700:4700::1111", True),
        (["api.example.com"], "API.example.com", "127.0.0.1", True),  # the name is listed
        (["vllm"], "vllm", "172.18.0.5", True),
        (["127.0.0.1"], "rebind.example.com", "127.0.0.1", True),  # the address is listed
        (["10.0.0.0/8"], "gpu.example.com", "10.1.2.3", True),
        (["10.0.0.0/8"], "gpu.example.com", "192.168.1.1", False),
        (["169.254.0.0/16"], "x.example.com", "169.254.169.254", False),
        (["169.254.169.254"], "x.example.com", "169.254.169.254", True),
    ],
)
def test_resolved_addresses(allowlist: list[str], host: str, address: str, allowed: bool) -> None:
    policy = UpstreamPolicy(allowlist)
    assert policy.address_allowed(host, address) is allowed
    assert (policy.address_problem(host, address) is None) is allowed


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("127.0.0.1:8088", "no ports"),
        ("localhost:11434", "no ports"),
        ("http://vllm", "without a scheme"),
        ("vllm/v1", "without a scheme or path"),
        ("*.example.com", "wildcards"),
        ("10.0.0.1/8", "no host bits"),
        ("10.0.0.0/33", "CIDR"),
        ("0x7f.1", "canonical IPv4"),
        ("127.1", "canonical IPv4"),
        ("vllm.", "trailing dot"),
        ("exa mple", "not a valid host name"),
    ],
)
def test_bad_allowlist_entries_are_named(entry: str, problem: str) -> None:
    with pytest.raises(AllowlistError) as caught:
        UpstreamPolicy(["127.0.0.1", entry])
    assert len(caught.value.problems) == 1
    assert repr(entry) in caught.value.problems[0]
    assert problem in caught.value.problems[0]


def test_the_allowlist_variable_is_comma_separated_and_checked_with_the_config() -> None:
    env = {ALLOWLIST_VARIABLE: " 127.0.0.1 , vllm,,[::1], 10.20.0.0/16 ,"}
    policy = read_upstream_policy(EnvReader(env))
    assert policy.entries == ("127.0.0.1", "vllm", "[::1]", "10.20.0.0/16")
    assert policy.base_url_problem("http://vllm:8000/v1") is None
    assert policy.base_url_problem("http://[::1]:8000/v1") is None
    assert read_upstream_policy(EnvReader({})).entries == ()

    reader = EnvReader({ALLOWLIST_VARIABLE: "127.0.0.1:80,ok.example.com,*.x"})
    read_upstream_policy(reader)
    with pytest.raises(ConfigError) as caught:
        reader.finish()
    assert len(caught.value.problems) == 2
    assert all(p.startswith(ALLOWLIST_VARIABLE) for p in caught.value.problems)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://API.openai.com:8443/openai/v1",
        "http://127.0.0.1:8088/v1",
        "http://[::1]:8000/v1",
        "https://[2606:4700:4700::1111]/v1",
        "http://vllm:8000/v1",
        "https://xn--bcher-kva.example/v1",
    ],
)
def test_the_policy_and_aiohttp_read_the_same_host(url: str) -> None:
    # The router binds credentials to the host the policy reads; aiohttp (yarl) must connect
    # to that same host for every URL the policy accepts.
    assert yarl.URL(url).raw_host == split_base_url(url).host


def test_every_seeded_provider_s_host_is_declared_for_its_credential() -> None:
    # The router's built-in declared hosts and the seed's base URLs must not drift apart:
    # a seeded provider whose host is not declared would never get its key.
    seed = json.loads(packaged_seed_path().read_text(encoding="utf-8"))
    hosted = {p["id"]: split_base_url(p["base_url"]).host for p in seed["providers"]}
    del hosted["switchboard"]  # the demo upstream takes no key
    assert {p: {h} for p, h in hosted.items()} == {p: set(h) for p, h in DECLARED_HOSTS.items()}
    credentials = ProviderCredentials({p: Secret("k") for p in hosted})
    for provider in seed["providers"]:
        found = credentials.lookup(provider["id"], provider["base_url"], required=True)
        assert found == Secret("k") or provider["id"] == "switchboard"


def test_remembered_verdicts_are_the_same_every_time() -> None:
    policy = UpstreamPolicy(["127.0.0.1"])
    for _ in range(3):
        assert policy.host_problem("http", "127.0.0.1") is None
        assert policy.host_problem("https", "api.openai.com") is None
        refused = policy.host_problem("http", "10.0.0.1")
        assert refused is not None and "a private address" in refused
        assert policy.host_problem("http", "api.openai.com") == (
            "plain http would carry prompts and keys in clear text: use https;"
            f" to allow it, add api.openai.com to {ALLOWLIST_VARIABLE} (catalog and router)"
        )
        assert policy.host_problem("ftp", "api.openai.com") is not None
    # A fresh policy (nothing remembered) says the same.
    assert UpstreamPolicy(["127.0.0.1"]).host_problem("http", "10.0.0.1") == refused


def test_remembered_verdicts_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstreams, "HOST_VERDICTS_MAX", 8)
    policy = UpstreamPolicy()
    for i in range(50):
        assert policy.host_problem("https", f"h{i}.example") is None
        assert policy.host_problem("https", f"10.0.0.{i}") is not None
        assert policy._host_verdicts.cache_info().currsize <= 8
    # Forgotten verdicts are judged again, the same way.
    assert policy.host_problem("https", "h0.example") is None
    assert policy.host_problem("https", "10.0.0.0") is not None


class _Request:
    """What the middleware reads of an aiohttp request."""

    def __init__(self, url: str) -> None:
        self.url = yarl.URL(url)


async def test_a_refused_host_is_refused_and_logged_on_every_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = AddressPolicyMiddleware(UpstreamPolicy())
    sent: list[str] = []

    async def handler(request: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        sent.append(str(request.url))
        return cast(aiohttp.ClientResponse, None)

    refused = cast(aiohttp.ClientRequest, _Request("http://127.0.0.1:8080/v1"))
    allowed = cast(aiohttp.ClientRequest, _Request("https://api.openai.com/v1"))
    with caplog.at_level(logging.WARNING, logger="switchboard_router.providers.http"):
        for _ in range(3):
            with pytest.raises(AddressRefused, match="a loopback address"):
                await middleware(refused, handler)
            await middleware(allowed, handler)
    warnings = [r for r in caplog.records if r.getMessage() == "upstream host refused"]
    assert len(warnings) == 3
    assert sent == ["https://api.openai.com/v1"] * 3
