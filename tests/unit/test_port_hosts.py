"""The HTTP port answers only to its own host names: a page whose name an attacker points
at 127.0.0.1 (DNS rebinding) gets 421, whatever the path."""

from __future__ import annotations

from worker.ops.health import allowed_hosts, host_name, port_handler
from worker.ops.httpd import Request


def request(host: str | None, path: str = "/metrics") -> Request:
    headers = {"host": host} if host is not None else {}
    return Request("GET", path, path, {}, headers, b"", "127.0.0.1")


def test_only_known_host_names_are_answered() -> None:
    hosts = allowed_hosts("127.0.0.1", ["console.lan"])
    handle = port_handler(lambda: b"metrics\n", None, hosts=hosts)
    good_ones = ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "CONSOLE.lan", None)
    # Addresses are answered: a scraper naming the box by IP is no rebinding.
    for good in (*good_ones, "10.1.2.3:9464", "[fe80::1]:9464"):
        assert handle(request(good)).status == 200, good
    for bad in ("attacker.example:8080", "attacker.example", "127.0.0.1.nip.io:8080"):
        assert handle(request(bad)).status == 421, bad
    assert host_name("[::1]:9") == "::1" and host_name("a.b:80") == "a.b"
