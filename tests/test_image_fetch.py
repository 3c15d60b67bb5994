"""Images by https URL: fetched safely from a real local HTTPS server, or refused naming the field.

The server listens on 127.0.0.1 with a certificate from a CA made here (trustme); the
tests trust that CA (IMAGE_URL_CA_BUNDLE) and allow that one loopback address
(IMAGE_URL_ALLOW_ADDRESSES). Hostnames resolve through a patched resolver that knows
only the names below (IP literals are parsed, never looked up), and every connect is
checked: one to a non-loopback address fails the test before a packet leaves, so even a
broken SSRF guard cannot reach a private address from here.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import trustme
from PIL import Image

from medgemma.addresses import DENIED
from medgemma.errors import InputError
from medgemma.image_fetch import MAX_REDIRECTS, fetch_image
from medgemma.images import ImageBudget, encode_image, load_image
from medgemma.request import parse_job_input
from medgemma.settings import Settings
from tests.conftest import run
from tests.test_addresses import inside

CERT_NAMES = ("images.test", "rebind.test", "127.0.0.1")
NAMES = {  # the patched resolver's whole world
    "images.test": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],  # not on the certificate
    "private.test": ["10.0.0.7"],
    "metadata.test": ["169.254.169.254"],
    "v6metadata.test": ["fd00:ec2::254"],
    "cgnat.test": ["100.64.0.1"],
    "mapped.test": ["::ffff:10.0.0.7"],
    "mapped-metadata.test": ["::ffff:169.254.169.254"],
    "mixed.test": ["93.184.216.34", "10.0.0.7"],  # one public, one private answer
}
REBIND = ("127.0.0.1", "10.0.0.7")  # rebind.test: the first answer, then every later one
IMAGE = Image.new("RGB", (32, 24), (200, 30, 60))
HUGE_OFFER = 256 * 1024 * 1024
SMALL_CAP = 1024 * 1024


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


IMAGE_PNG = png(IMAGE)
BOMB_PNG = png(Image.new("1", (10_000, 10_000)))  # ~12 KB that claims 100 M pixels


# ---- the local servers ---------------------------------------------------------------


@dataclass
class ServerState:
    sent: dict[str, int] = field(default_factory=dict)  # body bytes the server managed to write
    done: dict[str, threading.Event] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)

    def finished(self, route: str) -> threading.Event:
        return self.done.setdefault(route, threading.Event())


class ImageHandler(BaseHTTPRequestHandler):
    """The routes the tests need; HTTP/1.0, so a body without Content-Length ends at close."""

    state: ServerState

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        route = getattr(self, "route_" + url.path.strip("/").replace("-", "_").replace(".", "_"), None)
        if route is None:
            self.send_error(404)
            return
        try:
            route(parse_qs(url.query))
        except (OSError, ssl.SSLError):  # the client hung up: expected for refused bodies
            pass
        finally:
            self.state.finished(url.path).set()

    def _headers(self, status: int = 200, content_type: str | None = "image/png", length: int | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def route_ok_png(self, query: dict) -> None:
        self._headers(length=len(IMAGE_PNG))
        self.wfile.write(IMAGE_PNG)

    def route_chunked_png(self, query: dict) -> None:
        """HTTP/1.1 chunked transfer encoding, in three chunks."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
        third = len(IMAGE_PNG) // 3
        for chunk in (IMAGE_PNG[:third], IMAGE_PNG[third : 2 * third], IMAGE_PNG[2 * third :], b""):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.close_connection = True

    def route_text(self, query: dict) -> None:
        self._headers(content_type="text/html; charset=utf-8", length=len(IMAGE_PNG))
        self.wfile.write(IMAGE_PNG)

    def route_untyped(self, query: dict) -> None:
        self._headers(content_type=None, length=len(IMAGE_PNG))
        self.wfile.write(IMAGE_PNG)

    def route_bomb_png(self, query: dict) -> None:
        self._headers(length=len(BOMB_PNG))
        self.wfile.write(BOMB_PNG)

    def route_huge(self, query: dict) -> None:
        """No Content-Length: 256 MiB of body unless the client stops reading."""
        self._headers()
        chunk, sent = b"\0" * 65536, 0
        try:
            while sent < HUGE_OFFER:
                self.wfile.write(chunk)
                sent += len(chunk)
        finally:
            self.state.sent["/huge"] = sent

    def route_huge_declared(self, query: dict) -> None:
        self._headers(length=HUGE_OFFER)
        self.wfile.write(b"\0" * 65536)

    def route_short(self, query: dict) -> None:
        self._headers(length=len(IMAGE_PNG) + 1000)
        self.wfile.write(IMAGE_PNG)

    def route_slow_png(self, query: dict) -> None:
        """The image, after ``delay`` seconds."""
        time.sleep(float(query["delay"][0]))
        self._headers(length=len(IMAGE_PNG))
        self.wfile.write(IMAGE_PNG)

    def route_stall(self, query: dict) -> None:
        self.state.release.wait(10)

    def route_drip(self, query: dict) -> None:
        """Headers, then one byte every 50 ms: each read is quick, the whole never ends."""
        self._headers()
        while not self.state.release.wait(0.05):
            self.wfile.write(b"x")
            self.wfile.flush()

    def route_drip_headers(self, query: dict) -> None:
        self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
        while not self.state.release.wait(0.05):
            self.wfile.write(b"x")
            self.wfile.flush()

    def route_redirect(self, query: dict) -> None:
        self.send_response(int(query.get("status", ["302"])[0]))
        self.send_header("Location", query["to"][0])
        self.end_headers()

    def route_loop(self, query: dict) -> None:
        self.send_response(302)
        self.send_header("Location", "/loop")
        self.end_headers()


@dataclass
class Server:
    port: int
    state: ServerState
    scheme: str

    def url(self, path: str, host: str = "images.test") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


def serve(context: ssl.SSLContext | None) -> Iterator[Server]:
    state = ServerState()
    handler = type("Handler", (ImageHandler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(httpd.server_address[1], state, "https" if context else "http")
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA) -> Iterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*CERT_NAMES).configure_cert(context)
    yield from serve(context)


@pytest.fixture(scope="module")
def http_server() -> Iterator[Server]:
    yield from serve(None)


@pytest.fixture(scope="module")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def url_settings(ca_bundle: Path) -> Settings:
    """The two test-only settings on: trust the test CA, allow the server's loopback address."""
    return Settings.from_env(
        {
            "IMAGE_URL_CA_BUNDLE": str(ca_bundle),
            "IMAGE_URL_ALLOW_ADDRESSES": "127.0.0.1",
            "IMAGE_URL_TIMEOUT_S": "3",
            "IMAGE_URL_DEADLINE_S": "6",
        }
    )


# ---- no name leaves through DNS, no packet to anything but loopback --------------------


@pytest.fixture(autouse=True)
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The patched resolver: NAMES and rebind.test, IP literals parsed; anything else fails."""
    calls: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 (socket's names)
        calls.append(host)
        if host == "slow-dns.test":  # a resolver that takes its time, then answers
            time.sleep(2)
            host = "images.test"
        if host == "rebind.test":
            answers = [REBIND[0] if calls.count(host) == 1 else REBIND[1]]
        elif host in NAMES:
            answers = NAMES[host]
        else:  # numeric only: never a DNS query
            return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        result = []
        for answer in answers:
            v6 = ipaddress.ip_address(answer).version == 6
            sockaddr = (answer, port, 0, 0) if v6 else (answer, port)
            result.append((socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM, 6, "", sockaddr))
        return result

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple]]:
    """Every connect a test makes; one to a non-loopback address fails it before a packet leaves."""
    made: list[tuple] = []
    violations: list[object] = []

    def check(address: object) -> None:
        try:
            loopback = ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback  # type: ignore[index]
        except (ValueError, TypeError, IndexError):
            loopback = False
        if not loopback:
            violations.append(address)
            pytest.fail(f"a connect to a non-loopback address was attempted: {address!r}")
        made.append(address)  # type: ignore[arg-type]

    real_connect, real_connect_ex, real_create = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.create_connection,
    )

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        check(address)
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    yield made
    assert not violations


def fetched(url: str, settings: Settings, field: str = "image") -> Image.Image:
    """One image of a job of its own: ``load_image`` with a fresh budget."""
    return load_image(url, field, ImageBudget(settings))


def refused(url: str, url_settings: Settings, match: str, field: str = "image") -> InputError:
    """Fetching ``url`` fails with InputError naming ``field``; the message never echoes the URL."""
    with pytest.raises(InputError, match=f"^{field}: ") as caught:
        fetched(url, url_settings, field)
    message = str(caught.value)
    assert match in message, message
    parts = urlsplit(url)
    # A refused block is named, e.g. (::1/128), which for one address reads as the address.
    assert not parts.hostname or parts.hostname not in re.sub(r"\([0-9a-f.:]+/\d+\)", "", message)
    assert parts.path in ("", "/") or parts.path not in message
    return caught.value


# ---- success -----------------------------------------------------------------------------


def test_an_https_url_is_fetched_and_decoded(tls_server, url_settings, connects, caplog):
    with caplog.at_level(logging.INFO, logger="medgemma.image_fetch"):
        image = fetched(tls_server.url("/ok.png?sig=secret-token"), url_settings)
    assert image.mode == "RGB" and image.size == IMAGE.size
    assert image.tobytes() == IMAGE.tobytes()
    assert connects == [("127.0.0.1", tls_server.port)]
    # sizes and timings only: never the host, path or query
    assert f"{len(IMAGE_PNG)} bytes" in caplog.text
    assert "images.test" not in caplog.text and "ok.png" not in caplog.text and "secret-token" not in caplog.text


def test_a_chunked_body_is_read_whole_and_capped(tls_server, url_settings):
    assert fetched(tls_server.url("/chunked.png"), url_settings).tobytes() == IMAGE.tobytes()
    tight = replace(url_settings, max_image_bytes=len(IMAGE_PNG) - 1)
    refused(tls_server.url("/chunked.png"), tight, f"larger than the limit of {len(IMAGE_PNG) - 1} bytes")


def test_redirects_on_the_same_scheme_are_followed(tls_server, url_settings):
    relative = tls_server.url("/redirect?to=/ok.png&status=301")
    absolute = tls_server.url("/redirect?to=" + quote(tls_server.url("/ok.png"), safe=""))
    for url in (relative, absolute):
        assert fetched(url, url_settings).tobytes() == IMAGE.tobytes()


def test_the_host_is_resolved_once_and_the_vetted_address_is_the_one_connected(
    tls_server, url_settings, lookups, connects
):
    # rebind.test answers 127.0.0.1 first and 10.0.0.7 after: a second lookup would reach it.
    image = fetched(tls_server.url("/ok.png", host="rebind.test"), url_settings)
    assert image.tobytes() == IMAGE.tobytes()
    assert lookups.count("rebind.test") == 1
    assert connects == [("127.0.0.1", tls_server.port)]


def test_native_images_mix_base64_and_urls_in_order(tls_server, url_settings):
    blue = Image.new("RGB", (8, 8), (0, 0, 255))
    job = {"text": "Compare.", "images": [encode_image(blue), tls_server.url("/ok.png")]}
    request = parse_job_input(job, url_settings)
    assert [image.tobytes() for image in request.images] == [blue.tobytes(), IMAGE.tobytes()]
    with pytest.raises(InputError, match=r"^images\[1\]: .*private address"):
        parse_job_input({**job, "images": [encode_image(blue), "https://private.test/x.png"]}, url_settings)


# ---- the certificate is checked for the hostname --------------------------------------------


def test_a_certificate_for_another_name_is_refused(tls_server, url_settings):
    refused(tls_server.url("/ok.png", host="other.test"), url_settings, "TLS certificate could not be verified")


def test_without_the_ca_bundle_setting_the_test_certificate_is_not_trusted(tls_server, url_settings):
    refused(tls_server.url("/ok.png"), replace(url_settings, image_url_ca_bundle=None), "could not be verified")


# ---- slow, huge, wrong type, bombs -----------------------------------------------------------


def test_a_server_that_never_answers_times_out(tls_server, url_settings):
    started = time.monotonic()
    refused(tls_server.url("/stall"), replace(url_settings, image_url_timeout_s=0.3), "did not answer within 0.3 s")
    assert time.monotonic() - started < 2


def test_a_slow_name_lookup_times_out(tls_server, url_settings):
    started = time.monotonic()
    slow = replace(url_settings, image_url_timeout_s=0.3)
    refused(
        tls_server.url("/ok.png", host="slow-dns.test"), slow, "resolving the image URL's host took longer than 0.3 s"
    )
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("route", ["/drip", "/drip-headers"])
def test_a_slow_drip_is_cut_off_at_the_overall_deadline(tls_server, url_settings, route):
    # Every byte arrives well inside the 0.5 s read timeout; the 1 s deadline still ends it.
    quick_reads = replace(url_settings, image_url_timeout_s=0.5, image_url_deadline_s=1.0)
    started = time.monotonic()
    refused(tls_server.url(route), quick_reads, "took longer than the limit of 1 s")
    assert 0.9 < time.monotonic() - started < 3


def test_a_job_s_fetches_share_one_deadline(tls_server, url_settings, connects):
    # Each image answers in 0.6 s, inside the 1 s one fetch may take: eight of them took 4.8 s.
    # The job's 1.8 s run out in the third fetch, however long the first two took beyond 0.6 s.
    settings = replace(url_settings, image_url_deadline_s=1.0, image_url_job_deadline_s=1.8)
    job = {"text": "Compare.", "images": [tls_server.url("/slow.png?delay=0.6")] * 8}
    fetched(tls_server.url("/ok.png"), settings)  # the process's first fetch builds the TLS context
    connects.clear()
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        parse_job_input(job, settings)
    took = time.monotonic() - started
    assert str(caught.value) == (
        "images[2]: the job's image URLs took longer than the limit of 1.8 s for all of them together"
    )
    assert 1.7 < took < 2.6, took  # cut off at the job's limit
    assert len(connects) == 3  # the last five were never fetched


def test_a_conversation_s_fetches_share_one_deadline(tls_server, url_settings):
    settings = replace(url_settings, image_url_deadline_s=0.8, image_url_job_deadline_s=0.9)
    part = {"type": "image_url", "image_url": {"url": tls_server.url("/slow.png?delay=0.3")}}
    job = {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "Compare."}, part, part]}]}
    fetched(tls_server.url("/ok.png"), settings)  # the process's first fetch builds the TLS context
    with pytest.raises(InputError, match=r"^messages\[0\]\.content\[3\]\.image_url: the job's image URLs took longer "):
        parse_job_input(job, settings)
    enough = replace(settings, image_url_job_deadline_s=3.0)
    assert len(parse_job_input(job, enough).images) == 3


def test_a_huge_body_is_refused_while_it_streams(tls_server, url_settings):
    capped = replace(url_settings, max_image_bytes=SMALL_CAP)
    refused(tls_server.url("/huge"), capped, f"larger than the limit of {SMALL_CAP} bytes")
    assert tls_server.state.finished("/huge").wait(10), "the server kept sending after the client hung up"
    sent = tls_server.state.sent["/huge"]
    # The client read past the cap (no Content-Length to refuse on), then hung up: the server
    # got no further than the cap plus what the loopback socket buffers hold, far from 256 MiB.
    assert SMALL_CAP < sent < 32 * 1024 * 1024, sent


def test_a_declared_length_over_the_cap_is_refused_before_the_body(tls_server, url_settings):
    refused(
        tls_server.url("/huge-declared"), url_settings, f"larger than the limit of {url_settings.max_image_bytes} bytes"
    )


def test_a_body_shorter_than_its_length_is_refused(tls_server, url_settings):
    refused(tls_server.url("/short"), url_settings, "closed the connection before the whole image arrived")


@pytest.mark.parametrize("route", ["/text", "/untyped"])
def test_a_response_that_is_not_an_image_type_is_refused(tls_server, url_settings, route):
    refused(tls_server.url(route), url_settings, "Content-Type must be image/*")


def test_a_fetched_bomb_is_refused_on_its_header(tls_server, url_settings):
    refused(tls_server.url("/bomb.png"), url_settings, "10000x10000 pixels, over the limit of 40000000")


def test_an_http_error_status_is_refused(tls_server, url_settings):
    refused(tls_server.url("/missing.png"), url_settings, "answered HTTP 404")


# ---- schemes and redirects ---------------------------------------------------------------------


def test_plain_http_is_refused_unless_allowed(http_server, url_settings):
    refused(http_server.url("/ok.png"), url_settings, "IMAGE_URL_ALLOW_HTTP=true")
    allowed = replace(url_settings, image_url_allow_http=True)
    assert fetched(http_server.url("/ok.png"), allowed).tobytes() == IMAGE.tobytes()


@pytest.mark.parametrize("allow_http", [False, True])
def test_a_redirect_to_another_scheme_is_refused(tls_server, http_server, url_settings, connects, allow_http):
    url = tls_server.url("/redirect?to=" + quote(http_server.url("/ok.png"), safe=""))
    refused(url, replace(url_settings, image_url_allow_http=allow_http), "redirects from https:// to another scheme")
    assert connects == [("127.0.0.1", tls_server.port)]  # the plain server was never contacted


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://images.test/x.png", "data:text/plain,hi"])
def test_a_redirect_to_other_schemes_is_refused(tls_server, url_settings, target):
    refused(tls_server.url("/redirect?to=" + quote(target, safe="")), url_settings, "another scheme")


def test_too_many_redirects_are_refused(tls_server, url_settings, connects):
    refused(tls_server.url("/loop"), url_settings, f"redirects more than {MAX_REDIRECTS} times")
    assert len(connects) == MAX_REDIRECTS + 1


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://images.test/x.png", "only https:// image URLs are fetched"),
        ("file:///etc/passwd", "only https:// image URLs are fetched"),
        ("gopher://images.test:70/", "only https:// image URLs are fetched"),
        ("javascript:alert(1)", "only https:// image URLs are fetched"),
        ("https://user:password@images.test/x.png", "must not carry a user name or password"),
        ("https://images.test@private.test/x.png", "must not carry a user name or password"),
        ("https:///x.png", "has no host"),
        ("https://images.test:99999/x.png", "is not a valid URL"),
        ("https://images.test/a b.png", "must be percent-encoded"),
    ],
)
def test_bad_urls_are_refused_before_any_lookup(url_settings, lookups, url, problem):
    refused(url, url_settings, problem)
    assert lookups == []


# ---- SSRF: addresses that are never fetched ------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("private.test", "a private address (10.0.0.0/8)"),
        ("metadata.test", "a cloud metadata address"),
        ("v6metadata.test", "a cloud metadata address"),
        ("cgnat.test", "a shared (CGNAT) address (100.64.0.0/10)"),
        ("mapped.test", "an IPv4-mapped address of a private address (10.0.0.0/8)"),
        ("mapped-metadata.test", "an IPv4-mapped address of a cloud metadata address"),
        ("mixed.test", "a private address (10.0.0.0/8)"),
        ("127.0.0.2", "a loopback address (127.0.0.0/8)"),  # loopback, but not the one allowed
        ("[::1]", "a loopback address (::1/128)"),
        ("2130706434", "a loopback address (127.0.0.0/8)"),  # 127.0.0.2 written as one number
        ("0.0.0.0", "an unspecified address (0.0.0.0/32)"),
        ("169.254.1.1", "a link-local address (169.254.0.0/16)"),
        ("[fe80::1]", "a link-local address (fe80::/10)"),
        ("224.0.0.1", "a multicast address (224.0.0.0/4)"),
        ("240.0.0.1", "a reserved address (240.0.0.0/4)"),
        ("[2002:a00:7::1]", "a 6to4 address (2002::/16)"),  # 6to4 wrapping 10.0.0.7
        ("[64:ff9b::a9fe:a9fe]", "a NAT64 address (64:ff9b::/96)"),  # NAT64 of 169.254.169.254
        ("192.168.1.1", "a private address (192.168.0.0/16)"),
        ("[fd12:3456::1]", "a private address (fc00::/7)"),
        ("[fec0::1]", "a deprecated site-local address (fec0::/10)"),  # Python 3.11.7 calls it global
    ],
)
def test_hosts_resolving_to_non_public_addresses_are_refused(url_settings, lookups, connects, host, reason):
    refused(f"https://{host}/x.png", url_settings, f"resolves to {reason}; only public addresses are fetched")
    assert lookups == [host.strip("[]")] and connects == []


def test_a_redirect_to_a_private_or_metadata_address_is_refused(tls_server, url_settings, lookups, connects):
    for target, reason in (("https://private.test/x.png", "private"), ("https://metadata.test/latest/", "metadata")):
        url = tls_server.url("/redirect?to=" + quote(target, safe=""))
        refused(url, url_settings, f"resolves to a {reason}" if reason == "private" else "a cloud metadata address")
        assert lookups[-1] == urlsplit(target).hostname  # vetted on resolution, after the redirect
    assert set(connects) == {("127.0.0.1", tls_server.port)}  # only the test server was ever connected


def url_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def redirected_to(tls_server: Server, host: str) -> str:
    """A URL of the test server that redirects to ``https://host/x.png``."""
    return tls_server.url("/redirect?to=" + quote(f"https://{host}/x.png", safe=""))


@pytest.mark.parametrize("block", DENIED, ids=lambda block: str(block.network))
def test_every_refused_block_is_refused_through_a_redirect(tls_server, url_settings, lookups, connects, block):
    """Each block of the table (tests/test_addresses.py picks an address only it holds), reached by a redirect."""
    address = inside(block)
    reason = block.reason if block.kind != "an IPv4-mapped address" else "an IPv4-mapped address of "
    refused(redirected_to(tls_server, url_host(address)), url_settings, f"resolves to {reason}")
    assert lookups[-1] == str(address) and set(connects) == {("127.0.0.1", tls_server.port)}


@pytest.mark.parametrize(
    ("allowed", "host", "reason"),
    [
        ("64:ff9b::/96", "[64:ff9b::a9fe:a9fe]", "a NAT64 address carrying a cloud metadata address"),
        ("64:ff9b::/96", "[64:ff9b::10.0.0.7]", "a NAT64 address carrying a private address (10.0.0.0/8)"),
        ("64:ff9b::/96", "[64:ff9b::100.100.100.200]", "a NAT64 address carrying a cloud metadata address"),
        ("64:ff9b:1::/48", "[64:ff9b:1::a9fe:a9fe]", "a local-use NAT64 address carrying a cloud metadata address"),
        (
            "64:ff9b:1::/48",
            "[64:ff9b:1:ab::192.168.0.1]",
            "a local-use NAT64 address carrying a private address (192.168.0.0/16)",
        ),
        ("2002::/16", "[2002:a9fe:a9fe::1]", "a 6to4 address carrying a cloud metadata address"),
        ("2002::/16", "[2002:ac10:1::1]", "a 6to4 address carrying a private address (172.16.0.0/12)"),
        ("::/96", "[::10.0.0.7]", "an IPv4-compatible address carrying a private address (10.0.0.0/8)"),
        ("::ffff:0:0/96", "[::ffff:169.254.169.254]", "an IPv4-mapped address of a cloud metadata address"),
        ("169.254.0.0/16", "metadata.test", "a cloud metadata address"),
    ],
)
def test_an_allow_listed_prefix_still_refuses_the_ipv4_address_it_carries(
    tls_server, url_settings, connects, allowed, host, reason
):
    """An IPv6-only network must allow-list its NAT64 prefix: metadata and private IPv4 behind it stay out."""
    widened = replace(
        url_settings,
        image_url_allow_addresses=(*url_settings.image_url_allow_addresses, ipaddress.ip_network(allowed)),
    )
    refused(redirected_to(tls_server, host), widened, f"resolves to {reason}; only public addresses are fetched")
    assert set(connects) == {("127.0.0.1", tls_server.port)}


def test_fetch_returns_the_raw_bytes(tls_server, url_settings):
    assert fetch_image(tls_server.url("/ok.png"), "image", url_settings, 60.0) == IMAGE_PNG


# ---- through the real handler --------------------------------------------------------------------


@pytest.mark.model
def test_the_handler_answers_an_image_url_and_keeps_serving_after_a_refused_one(
    vision_worker, tls_server, ca_bundle, monkeypatch
):
    import handler
    from medgemma.worker import Worker

    worker = vision_worker
    fetching = replace(
        worker.settings,
        image_url_ca_bundle=ca_bundle,
        image_url_allow_addresses=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    monkeypatch.setattr(handler, "WORKER", Worker(fetching, worker.engine))

    def job(image: str) -> dict:
        return {"id": "url-job", "input": {"text": "Describe the image.", "image": image}}

    by_url = run(handler.handler(job(tls_server.url("/ok.png"))))
    by_base64 = run(handler.handler(job(encode_image(IMAGE))))
    assert "error" not in by_url, by_url
    assert by_url["used_dummy_image"] is False
    # The same image by URL and by base64 is the same prompt, so the same greedy answer.
    assert by_url["usage"] == by_base64["usage"] and by_url["output"] == by_base64["output"]

    refused_job = run(handler.handler(job("https://metadata.test/latest/meta-data/")))
    assert refused_job == {"error": refused_job["error"]}
    assert refused_job["error"].startswith("image: ") and "cloud metadata address" in refused_job["error"]
    assert "metadata.test" not in refused_job["error"]

    after = run(handler.handler(job(tls_server.url("/ok.png"))))
    assert after["output"] == by_url["output"]
