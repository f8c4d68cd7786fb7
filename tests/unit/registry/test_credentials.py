"""Where credentials come from (policy, password file, Docker config) and which keys clash.

The files are real files in ``tmp_path``; ``environ`` and ``home`` are passed in, so no test
reads the real ``~/.docker``. Every error must be one line that names the key and the file
and never the secret.
"""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from retention.config.load import load_policy
from retention.core.policy import RegistrySettings
from retention.errors import ConfigError
from retention.registry.credentials import (
    Credentials,
    docker_config_path,
    docker_credentials,
    read_password_file,
    registry_host,
    resolve,
)

SECRET = "s3cr3t-5e1f-distinctive"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def docker_config(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    return path


def refusal(call: Any, *args: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        call(*args)
    message = str(raised.value)
    assert "\n" not in message and SECRET not in message and b64(SECRET) not in message
    return message


# --- the policy's own keys -----------------------------------------------------------


def test_no_username_means_anonymous() -> None:
    assert resolve(RegistrySettings(url="http://127.0.0.1:5000")) is None


def test_username_and_password_from_the_policy() -> None:
    settings = RegistrySettings(url="http://127.0.0.1:5000", username="ci", password=SECRET)
    assert resolve(settings) == Credentials("ci", SECRET)


def test_credentials_in_the_url_still_work_when_no_username_is_set() -> None:
    settings = RegistrySettings(url="http://ci:p%40ss@127.0.0.1:5000")
    assert resolve(settings) == Credentials("ci", "p@ss")


def test_the_password_never_shows_in_the_repr_of_credentials() -> None:
    assert SECRET not in repr(Credentials("ci", SECRET))


# --- password_file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{SECRET}\n", SECRET),
        (f"{SECRET}\r\n", SECRET),
        (SECRET, SECRET),
        (f"{SECRET}\n\n", f"{SECRET}\n"),  # one newline only: the rest may be the password's
        (f" {SECRET} \n", f" {SECRET} "),
    ],
)
def test_a_password_file_loses_exactly_one_trailing_newline(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "password"
    path.write_bytes(content.encode())
    assert read_password_file(path) == expected


def test_the_password_file_is_used_with_the_username(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(SECRET + "\n")
    settings = RegistrySettings(url="http://127.0.0.1:5000", username="ci", password_file=path)
    assert resolve(settings) == Credentials("ci", SECRET)


def test_a_missing_password_file_is_one_line_naming_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    assert refusal(read_password_file, path) == (
        f"registry.password_file: cannot read the password file {path}: No such file or directory"
    )


def test_an_empty_password_file_is_an_error_not_an_empty_password(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("\n")
    assert refusal(read_password_file, path) == f"registry.password_file: {path} is empty"


def test_a_password_file_that_is_a_directory_says_why(tmp_path: Path) -> None:
    """An unmounted Secret often leaves a directory where the file should be."""
    assert refusal(read_password_file, tmp_path) == (
        f"registry.password_file: cannot read the password file {tmp_path}: Is a directory"
    )


# --- Docker's config.json ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://registry.example.com:5000", "registry.example.com:5000"),
        ("https://registry.example.com:5000", "https://registry.example.com:5000"),
        ("https://registry.example.com", "https://registry.example.com/v1/"),
        ("https://Registry.Example.com", "registry.example.com"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000/v2/"),
    ],
)
def test_an_auths_key_matches_by_host_and_port_whatever_its_spelling(
    tmp_path: Path, url: str, key: str
) -> None:
    path = docker_config(tmp_path, {"auths": {key: {"auth": b64(f"ci:{SECRET}")}}})
    assert docker_credentials(url, path) == Credentials("ci", SECRET)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://registry.example.com:5000", "registry.example.com"),
        ("https://registry.example.com", "registry.example.com:5000"),
        ("https://registry.example.com", "other.example.com"),
    ],
)
def test_another_host_or_port_does_not_match(tmp_path: Path, url: str, key: str) -> None:
    path = docker_config(tmp_path, {"auths": {key: {"auth": b64(f"ci:{SECRET}")}}})
    assert "no login for" in refusal(docker_credentials, url, path)


def test_username_and_password_fields_work_as_well_as_auth(tmp_path: Path) -> None:
    path = docker_config(tmp_path, {"auths": {"reg:5000": {"username": "ci", "password": SECRET}}})
    assert docker_credentials("https://reg:5000", path) == Credentials("ci", SECRET)


def test_a_password_with_colons_survives_the_auth_field(tmp_path: Path) -> None:
    path = docker_config(tmp_path, {"auths": {"reg": {"auth": b64("ci:a:b:c")}}})
    assert docker_credentials("https://reg", path) == Credentials("ci", "a:b:c")


def test_the_docker_config_is_found_where_docker_looks(tmp_path: Path) -> None:
    assert docker_config_path({"DOCKER_CONFIG": "/etc/docker-cfg"}) == Path(
        "/etc/docker-cfg/config.json"
    )
    assert docker_config_path({}, home=tmp_path) == tmp_path / ".docker" / "config.json"


def test_credentials_docker_reads_the_config_under_docker_config(tmp_path: Path) -> None:
    docker_config(tmp_path, {"auths": {"reg:5000": {"auth": b64(f"ci:{SECRET}")}}})
    settings = RegistrySettings(url="https://reg:5000", credentials="docker")
    found = resolve(settings, environ={"DOCKER_CONFIG": str(tmp_path)})
    assert found == Credentials("ci", SECRET)


def test_credentials_docker_reads_the_home_directory_without_docker_config(
    tmp_path: Path,
) -> None:
    (tmp_path / ".docker").mkdir()
    docker_config(tmp_path / ".docker", {"auths": {"reg": {"auth": b64(f"ci:{SECRET}")}}})
    settings = RegistrySettings(url="https://reg", credentials="docker")
    assert resolve(settings, environ={}, home=tmp_path) == Credentials("ci", SECRET)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            {"auths": {"reg": {}}, "credsStore": "desktop"},
            "the login for reg is kept by the credential helper 'docker-credential-desktop', "
            "which retention does not support; use username with password_file instead",
        ),
        (
            {"auths": {}, "credHelpers": {"reg": "ecr-login"}},
            "the login for reg is kept by the credential helper 'docker-credential-ecr-login', "
            "which retention does not support; use username with password_file instead",
        ),
        ({"auths": {}}, "no login for reg in 'auths' (run docker login reg)"),
        ({}, "no login for reg in 'auths' (run docker login reg)"),
        ({"auths": {"reg": {"auth": "%%%"}}}, "the auth of reg is not base64 of user:password"),
        (
            {"auths": {"reg": {"auth": b64(SECRET)}}},
            "the auth of reg is not base64 of user:password",
        ),
        (
            {"auths": {"reg": {"identitytoken": SECRET}}},
            "the entry for reg holds an identity token, which retention does not support",
        ),
        ({"auths": ["reg"]}, "'auths' is not a mapping"),
        ([], "not a JSON object"),
    ],
)
def test_a_docker_config_without_usable_login_says_exactly_why(
    tmp_path: Path, document: Any, reason: str
) -> None:
    path = docker_config(tmp_path, document)
    message = refusal(docker_credentials, "https://reg", path)
    assert message == f"registry.credentials: Docker config {path}: {reason}"


def test_a_docker_config_that_is_not_json_never_echoes_its_content(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"auths": {"reg": {"auth": "' + b64(f"ci:{SECRET}") + '"}}\n,,')
    assert refusal(docker_credentials, "https://reg", path) == (
        f"registry.credentials: Docker config {path}: not valid JSON (line 2)"
    )


def test_a_missing_docker_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    assert refusal(docker_credentials, "https://reg", path) == (
        f"registry.credentials: cannot read the Docker config {path}: No such file or directory"
    )


def test_registry_host_strips_scheme_path_and_userinfo() -> None:
    assert registry_host("https://ci:pw@Reg.Example:5000/v1/") == "reg.example:5000"


# --- keys that do not go together, with their lines ----------------------------------


def config_problems(tmp_path: Path, registry: str) -> list[str]:
    path = tmp_path / "policies.yml"
    path.write_text("registry:\n" + textwrap.indent(textwrap.dedent(registry), "  "))
    with pytest.raises(ConfigError) as raised:
        load_policy(path, {})
    return [line.removeprefix(f"{path}:") for line in raised.value.problems]


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        (
            """\
            url: https://reg
            username: ci
            password: x
            password_file: /run/secrets/pw
            """,
            "5 registry.password_file: set password or password_file, not both",
        ),
        (
            """\
            url: https://reg
            password_file: /run/secrets/pw
            """,
            "3 registry.password_file: password_file needs username too",
        ),
        (
            """\
            url: https://reg
            username: ci
            credentials: docker
            """,
            "4 registry.credentials: credentials: docker takes the username and password "
            "from the Docker config; remove username",
        ),
        (
            """\
            url: https://reg
            username: ci
            password_file: /pw
            credentials: docker
            """,
            "5 registry.credentials: credentials: docker takes the username and password "
            "from the Docker config; remove username and password_file",
        ),
        (
            """\
            url: https://reg
            credentials: keychain
            """,
            "3 registry.credentials: expected 'docker', got 'keychain'",
        ),
        (
            """\
            url: http://reg
            ca_cert: /ca.pem
            """,
            "3 registry.ca_cert: ca_cert needs an https:// registry.url",
        ),
        (
            """\
            url: http://reg
            insecure: true
            """,
            "3 registry.insecure: insecure needs an https:// registry.url",
        ),
        (
            """\
            url: https://reg
            ca_cert: /ca.pem
            insecure: true
            """,
            "4 registry.insecure: insecure: true skips verification, so ca_cert would be "
            "ignored; set one of them",
        ),
        (
            """\
            url: https://reg
            client_key: /key.pem
            """,
            "3 registry.client_key: client_key needs client_cert too",
        ),
        (
            """\
            url: https://reg
            insecure: maybe
            """,
            "3 registry.insecure: expected true or false, got 'maybe'",
        ),
    ],
)
def test_keys_that_do_not_go_together_are_errors_at_their_line(
    tmp_path: Path, registry: str, expected: str
) -> None:
    assert config_problems(tmp_path, registry) == [expected]


def test_every_tls_and_credential_key_loads_when_used_as_intended(tmp_path: Path) -> None:
    path = tmp_path / "policies.yml"
    path.write_text(
        textwrap.dedent(
            """\
            registry:
              url: https://reg:5000
              username: ci
              password_file: /run/secrets/pw
              ca_cert: /etc/ca.pem
              client_cert: /etc/client.pem
              client_key: /etc/client-key.pem
            """
        )
    )
    registry = load_policy(path, {}).registry
    assert registry.password_file == Path("/run/secrets/pw")
    assert (registry.ca_cert, registry.insecure) == (Path("/etc/ca.pem"), False)
    assert registry.client_key == Path("/etc/client-key.pem")
