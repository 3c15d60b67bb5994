"""Fetching a job's image from an ``https://`` URL without letting the URL reach inside.

A URL in a job is untrusted: it may point at the worker's own network (SSRF), at a
cloud metadata service, or at a server that sends forever or never. So each hop is
parsed and refused early (scheme, userinfo), its host is resolved once and every
address vetted (``medgemma.addresses``), the connection goes to that vetted address
(TLS still verifies the certificate for the hostname, so DNS rebinding cannot swap the
address between check and connect), and the body is capped while it streams, under
per-read timeouts and one overall deadline: the fetch's own, or what the job's earlier
fetches left of the job's. Nothing about the URL is logged or put in an error message:
a URL can carry patient identifiers or signed tokens. Blocking I/O, stdlib only.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from medgemma.addresses import refusal
from medgemma.errors import InputError
from medgemma.settings import Settings

log = logging.getLogger("medgemma.image_fetch")

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
READ_CHUNK = 64 * 1024
USER_AGENT = "medgemma-runpod-worker"
HOST_CHARS = re.compile(r"[A-Za-z0-9._:-]+")  # a DNS name (IDNA-encoded) or an IP literal
SCHEME_PROBLEM = "only https:// image URLs are fetched (besides base64 and data:image/... URLs)"
HTTP_PROBLEM = "plain http:// image URLs are refused; use https:// (or set IMAGE_URL_ALLOW_HTTP=true)"
#: A socket address as getaddrinfo gives it (IPv4, IPv6, or a raw family's).
SockAddr = tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
#: One getaddrinfo answer: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, SockAddr]
#: One vetted address: what ``socket.socket`` and ``connect`` are given, (family, type, proto, sockaddr).
Address = tuple[socket.AddressFamily, socket.SocketKind, int, SockAddr]


@dataclass(frozen=True)
class Target:
    """One hop's parsed URL: where to connect and what to ask for."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) hostname or IP literal, no brackets
    port: int
    path: str  # path and query, never the fragment

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def fetch_image(url: str, field: str, settings: Settings, job_seconds_left: float) -> bytes:
    """The body of an image URL, at most MAX_IMAGE_BYTES; InputError naming ``field`` otherwise.

    ``job_seconds_left``: what the job's earlier fetches left of IMAGE_URL_JOB_DEADLINE_S.
    """
    started = time.monotonic()
    target = parse_url(url, field, settings.image_url_allow_http)
    deadline = fetch_deadline(settings, job_seconds_left)
    try:
        for redirects in range(MAX_REDIRECTS + 1):
            outcome = _get(target, field, settings, deadline)
            if isinstance(outcome, bytes):
                log.info(
                    "%s fetched: %d bytes in %.3f s, %d redirect(s)",
                    field,
                    len(outcome),
                    time.monotonic() - started,
                    redirects,
                )
                return outcome
            location = urljoin(target.url, outcome)
            if location.split(":", 1)[0].lower() != target.scheme:
                raise InputError(field, f"the image URL redirects from {target.scheme}:// to another scheme; refused")
            target = parse_url(location, field, settings.image_url_allow_http)
    finally:
        deadline.cancel()
    raise InputError(field, f"the image URL redirects more than {MAX_REDIRECTS} times")


def parse_url(url: str, field: str, allow_http: bool) -> Target:
    """Refuse what is wrong with a URL before any lookup: scheme, userinfo, a missing or odd host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise InputError(field, "is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise InputError(field, HTTP_PROBLEM)
    if scheme not in ("https", "http"):
        raise InputError(field, SCHEME_PROBLEM)
    if "@" in parts.netloc:
        raise InputError(field, "image URLs must not carry a user name or password")
    if not parts.hostname:
        raise InputError(field, "the image URL has no host")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        host = ""
    if not HOST_CHARS.fullmatch(host):
        raise InputError(field, "the image URL's host is not a valid name")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(ord(char) < 33 or ord(char) > 126 for char in path):
        raise InputError(field, "the image URL's path must be percent-encoded (no spaces or control characters)")
    return Target(url.strip(), scheme, host, port if port is not None else (443 if scheme == "https" else 80), path)


def fetch_deadline(settings: Settings, job_seconds_left: float) -> Deadline:
    """The fetch's own IMAGE_URL_DEADLINE_S, or the rest of the job's when that ends first."""
    if job_seconds_left < settings.image_url_deadline_s:
        return Deadline(
            max(job_seconds_left, 0.0),
            f"the job's image URLs took longer than the limit of {settings.image_url_job_deadline_s:g} s "
            "for all of them together",
        )
    return Deadline(
        settings.image_url_deadline_s,
        f"fetching the image URL took longer than the limit of {settings.image_url_deadline_s:g} s",
    )


class Deadline:
    """One fetch's overall time limit, enforced by a timer that shuts the open socket.

    Per-read timeouts alone don't bound a server that drips a byte just inside each
    one; shutting the socket down wakes whatever read is blocked on it. ``problem``
    says which limit ran out.
    """

    def __init__(self, seconds: float, problem: str):
        self.problem = problem
        self.expired = False
        self._end = time.monotonic() + seconds
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self, field: str) -> float:
        left = self._end - time.monotonic()
        if left <= 0 or self.expired:
            raise self.error(field)
        return left

    def passed(self) -> bool:
        """Expired, or due to: the timer thread may not have run yet when the time is up."""
        return self.expired or time.monotonic() >= self._end

    def error(self, field: str) -> InputError:
        return InputError(field, self.problem)

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.expired and sock is not None:
                _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)


def _close(sock: socket.socket, deadline: Deadline) -> None:
    """Unwatch first: the timer must never shut down an fd number reused after close."""
    deadline.watch(None)
    sock.close()


def _shutdown(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for an SSLSocket: it wakes a blocked read without
    # touching TLS state the reading thread is using. The fd is closed by its owner only.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _get(target: Target, field: str, settings: Settings, deadline: Deadline) -> bytes | str:
    """One request: the body, or a redirect's Location."""
    addresses = _resolve(target, field, settings, deadline)
    sock = _connect(target, addresses, field, settings, deadline)
    connection = http.client.HTTPConnection(target.host, target.port)
    connection.sock, connection.auto_open = sock, 0  # never reconnect by name
    response: http.client.HTTPResponse | None = None
    try:
        connection.request(
            "GET",
            target.path,
            headers={"Host": target.host_header, "Accept": "image/*", "User-Agent": USER_AGENT, "Connection": "close"},
        )
        response = connection.getresponse()
        _check_deadline(deadline, field)
        if response.status in REDIRECT_STATUSES:
            location = response.getheader("Location")
            if not location:
                raise InputError(field, f"the image server answered HTTP {response.status} without a Location")
            return location
        if response.status != 200:
            raise InputError(field, f"the image server answered HTTP {response.status}, not 200")
        _check_headers(response, field, settings.max_image_bytes)
        body = _read_body(response, field, settings.max_image_bytes)
        _check_deadline(deadline, field)
        return body
    except (OSError, http.client.HTTPException) as error:
        raise _network_error(error, field, settings, deadline) from None
    finally:
        deadline.watch(None)
        if response is not None:
            response.close()  # it holds the socket open after the connection lets go
        connection.close()


def _resolve(target: Target, field: str, settings: Settings, deadline: Deadline) -> list[Address]:
    """Resolve once and vet every address; any refused address refuses the host.

    The lookup runs on a helper thread so the deadline bounds it (getaddrinfo has no timeout).
    """
    found: list[Sequence[AddrInfo] | OSError | UnicodeError] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as error:
            found.append(error)

    thread = threading.Thread(target=lookup, name="image-url-dns", daemon=True)
    thread.start()
    thread.join(min(settings.image_url_timeout_s, deadline.remaining(field)))
    if not found:
        _check_deadline(deadline, field)
        raise InputError(field, f"resolving the image URL's host took longer than {settings.image_url_timeout_s:g} s")
    if isinstance(found[0], BaseException) or not found[0]:
        raise InputError(field, "the image URL's host could not be resolved")
    addresses: list[Address] = []
    for family, kind, proto, _, sockaddr in found[0]:
        reason = refusal(ipaddress.ip_address(sockaddr[0]), settings.image_url_allow_addresses)
        if reason is not None:
            raise InputError(field, f"the image URL's host resolves to {reason}; only public addresses are fetched")
        addresses.append((family, kind, proto, sockaddr))
    return addresses


def _connect(
    target: Target, addresses: list[Address], field: str, settings: Settings, deadline: Deadline
) -> socket.socket:
    """A connected socket to one of the vetted addresses; TLS verified for the hostname on https."""
    for family, kind, proto, sockaddr in addresses:
        sock = socket.socket(family, kind, proto)
        deadline.watch(sock)
        try:
            sock.settimeout(min(settings.image_url_timeout_s, deadline.remaining(field)))
            sock.connect(sockaddr)
            if target.scheme == "http":
                return sock
            tls = _tls_context(settings.image_url_ca_bundle and str(settings.image_url_ca_bundle)).wrap_socket(
                sock, server_hostname=target.host, do_handshake_on_connect=False
            )
            sock = tls  # from here on the TLS socket owns the connection
            deadline.watch(tls)
            tls.do_handshake()
            return tls
        except OSError as error:
            _close(sock, deadline)
            if deadline.passed() or isinstance(error, (TimeoutError, ssl.SSLError)):
                raise _network_error(error, field, settings, deadline) from None
            # refused or unreachable: try the next vetted address
        except BaseException:
            _close(sock, deadline)
            raise
    raise InputError(field, "could not connect to the image server")


@functools.lru_cache(maxsize=4)
def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus IMAGE_URL_CA_BUNDLE's; hostname checking on."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def _check_headers(response: http.client.HTTPResponse, field: str, max_bytes: int) -> None:
    content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if not content_type.startswith("image/"):
        raise InputError(field, "the image URL did not answer with an image (Content-Type must be image/*)")
    encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise InputError(field, "the image URL answered with a compressed body (Content-Encoding); refused")
    if response.length is not None and response.length > max_bytes:
        raise InputError(field, f"image is larger than the limit of {max_bytes} bytes")


def _read_body(response: http.client.HTTPResponse, field: str, max_bytes: int) -> bytes:
    """Read at most ``max_bytes``: refused the moment one byte more arrives."""
    body = bytearray()
    while chunk := response.read1(READ_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise InputError(field, f"image is larger than the limit of {max_bytes} bytes")
    if response.length:  # Content-Length promised more than arrived
        raise InputError(field, "the image server closed the connection before the whole image arrived")
    if not body:
        raise InputError(field, "is empty")
    return bytes(body)


def _check_deadline(deadline: Deadline, field: str) -> None:
    """The timer's shutdown can read as a clean end of the headers or the body: don't trust what came."""
    if deadline.passed():
        raise deadline.error(field)


def _network_error(error: Exception, field: str, settings: Settings, deadline: Deadline) -> InputError:
    """What went wrong on the wire, in words that name no host or URL."""
    if deadline.passed():
        return deadline.error(field)
    if isinstance(error, TimeoutError):
        return InputError(field, f"the image server did not answer within {settings.image_url_timeout_s:g} s")
    if isinstance(error, ssl.SSLCertVerificationError):
        return InputError(field, "the image server's TLS certificate could not be verified")
    if isinstance(error, ssl.SSLError):
        return InputError(field, "TLS with the image server failed")
    return InputError(field, "the image server closed the connection or sent a malformed response")
