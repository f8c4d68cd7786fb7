"""The bearer token: where it is read from, and how a header is checked against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from retention.core.policy import Server
from retention.errors import SecretError
from retention.service.access import BearerToken, read_secret, server_token
from retention.service.http_api import Access, Readiness, respond

TOKEN = "0123456789abcdef-token"


def test_no_token_configured_reads_nothing() -> None:
    assert server_token(Server()) is None


def test_the_token_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    token = server_token(Server(token_file=path))
    assert token is not None and token.allows(f"Bearer {TOKEN}")


def test_the_token_variable_is_read_from_the_environment() -> None:
    token = server_token(Server(token_env="T"), environ={"T": TOKEN})
    assert token is not None and token.allows(f"bearer {TOKEN}")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "server token variable T is empty"),
        ({"T": "short"}, "fewer than 16 characters"),
        ({"T": "with space inside the token"}, "contains whitespace"),
    ],
)
def test_an_unusable_token_variable_is_an_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SecretError, match=message):
        server_token(Server(token_env="T"), environ=environ)


def test_a_missing_token_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"cannot read the server token file .*missing"):
        read_secret(tmp_path / "missing", None, "server token")


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"]
)
def test_anything_but_the_exact_bearer_token_is_refused(header: str | None) -> None:
    assert not BearerToken(TOKEN.encode()).allows(header)


def test_the_token_never_shows_in_its_repr() -> None:
    assert TOKEN not in repr(BearerToken(TOKEN.encode()))


class _App:
    readiness = Readiness(True, "ok")
    last_report = b"{}"
    started = 0

    def metrics_body(self) -> bytes:
        return b""

    def start_now(self) -> bool:
        self.started += 1
        return True


GUARDED = Access(BearerToken(TOKEN.encode()), protect_report=False)


def test_a_guarded_run_needs_the_token_before_anything_starts() -> None:
    app = _App()
    refused = respond(app, "POST", "/run", None, GUARDED)
    assert refused.status == 401
    assert ("WWW-Authenticate", 'Bearer realm="retention"') in refused.headers
    assert app.started == 0
    assert respond(app, "POST", "/run", f"Bearer {TOKEN}", GUARDED).status == 202
    assert app.started == 1


def test_a_wrong_method_on_a_guarded_path_is_401_not_405_for_strangers() -> None:
    assert respond(_App(), "GET", "/run", None, GUARDED).status == 401


def test_the_report_is_open_unless_protected() -> None:
    assert respond(_App(), "GET", "/report", None, GUARDED).status == 200
    protected = Access(GUARDED.token, protect_report=True)
    assert respond(_App(), "GET", "/report", None, protected).status == 401
    assert respond(_App(), "GET", "/report", f"Bearer {TOKEN}", protected).status == 200


def test_head_is_answered_as_get_on_read_endpoints_only() -> None:
    assert respond(_App(), "HEAD", "/healthz").status == 200
    assert respond(_App(), "HEAD", "/run").status == 405


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ({"listen": "0.0.0.0:9478"}, "reachable from other machines"),
        ({"listen": "[::]:9478"}, "reachable from other machines"),
        ({"listen": "retention.example.com:9478"}, "reachable from other machines"),
        ({"protect_report": True}, "protect_report needs"),
        ({"token_file": "/t", "token_env": "T"}, "not both"),
        ({"token_env": "NOT-A-NAME"}, "not an environment variable name"),
    ],
)
def test_the_server_section_refuses_unguarded_or_muddled_settings(
    server: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Server.model_validate(server)


@pytest.mark.parametrize("listen", ["127.0.0.1:9478", "localhost:1", "[::1]:9478", "127.8.0.1:80"])
def test_loopback_listens_need_no_token(listen: str) -> None:
    assert Server(listen=listen).listen == listen


class _BrokenApp(_App):
    def metrics_body(self) -> bytes:
        raise RuntimeError(f"bug in {__file__}")


def test_a_bug_behind_an_endpoint_is_a_500_without_traceback_or_path() -> None:
    import urllib.error
    import urllib.request

    from registry_server import free_port

    from retention.service.http_api import listening

    server = Server(listen=f"127.0.0.1:{free_port()}")
    with listening(server, _BrokenApp()), pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"http://{server.listen}/metrics", timeout=5)
    body = answer.value.read().decode()
    assert answer.value.code == 500
    assert body == '{"error": "internal error"}\n'
    assert answer.value.headers["Server"] == "retention"
