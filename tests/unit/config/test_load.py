"""The policy file: every mistake reported at once, each as ``FILE:LINE keypath: message``.

Each test writes a real file into ``tmp_path`` and loads it by the relative name
``policies.yml`` (the working directory is ``tmp_path``), so the expected lines read
exactly as an operator would see them.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from retention.config.load import (
    LoadedPolicy,
    check_warnings,
    load_policy,
    load_policy_with_warnings,
)
from retention.core.policy import Policy, policy_from_mapping
from retention.errors import ConfigError

FILE = Path("policies.yml")
REGISTRY = "registry:\n  url: http://127.0.0.1:5000\n"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write(text: str) -> Path:
    FILE.write_text(textwrap.dedent(text), encoding="utf-8")
    return FILE


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    write(text)
    with pytest.raises(ConfigError) as caught:
        load_policy(FILE, environ or {})
    return caught.value.problems


def loaded(text: str, environ: dict[str, str] | None = None) -> LoadedPolicy:
    write(text)
    return load_policy_with_warnings(FILE, environ or {})


# --- one mistake, one line -------------------------------------------------------------

VALIDATION_CASES = [
    pytest.param(
        REGISTRY + "rules:\n  - name: a\n    keep_lst: 3\n",
        "policies.yml:5 rules[0]: unknown key 'keep_lst' (did you mean 'keep_last'?)",
        id="unknown key with a suggestion",
    ),
    pytest.param(
        REGISTRY + "colour: blue\n",
        "policies.yml:3 unknown key 'colour'",
        id="unknown top-level key without a close match",
    ),
    pytest.param(
        REGISTRY + "rule:\n  - name: a\n",
        "policies.yml:3 unknown key 'rule' (did you mean 'rules'?)",
        id="unknown top-level key with a suggestion",
    ),
    pytest.param(
        REGISTRY + "gc:\n  stratgy: exec\n",
        "policies.yml:4 gc: unknown key 'stratgy' (did you mean 'strategy'?)",
        id="unknown key in a nested section",
    ),
    pytest.param(
        "# policy\nregistry:\n  username: bob\n",
        "policies.yml:2 registry.url: is required",
        id="missing key reported at its parent",
    ),
    pytest.param(
        "# policy\n\nrules: []\n",
        "policies.yml:3 registry: is required",
        id="missing top-level section reported at the top mapping",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - keep_last: 3\n",
        "policies.yml:4 rules[0].name: is required",
        id="missing key in a list item",
    ),
    pytest.param(
        "registry:\n  url: http://127.0.0.1:5000\n  concurrency: five\n",
        "policies.yml:3 registry.concurrency: expected an integer, got 'five'",
        id="integer given as a word",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - name: a\n    keep_last: 2.5\n",
        "policies.yml:5 rules[0].keep_last: expected an integer, got 2.5",
        id="integer given as a fraction",
    ),
    pytest.param(
        "registry:\n  url: 5000\n",
        "policies.yml:2 registry.url: expected a string, got 5000",
        id="string given as a number",
    ),
    pytest.param(
        "registry:\n  url: http://127.0.0.1:5000\n  password: 12345\n",
        "policies.yml:3 registry.password: expected a string, "
        "got a value not shown here (it is a secret)",
        id="a wrong password is never echoed",
    ),
    pytest.param(
        REGISTRY + "protect: 'v.*'\n",
        "policies.yml:3 protect: expected a list, got 'v.*'",
        id="list given as a string",
    ),
    pytest.param(
        REGISTRY + "gc:\n  command: registry garbage-collect\n",
        "policies.yml:4 gc.command: expected a list, got 'registry garbage-collect'",
        id="command given as one string",
    ),
    pytest.param(
        REGISTRY + "rules:\n  name: a\n",
        "policies.yml:4 rules: expected a list, got a mapping",
        id="list given as a mapping",
    ),
    pytest.param(
        "registry: http://127.0.0.1:5000\n",
        "policies.yml:1 registry: expected a mapping, got 'http://127.0.0.1:5000'",
        id="mapping given as a string",
    ),
    pytest.param(
        REGISTRY + "safety:\n",
        "policies.yml:3 safety: expected a mapping, got nothing",
        id="section left empty",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - keep everything\n",
        "policies.yml:4 rules[0]: expected a mapping, got 'keep everything'",
        id="rule given as a string",
    ),
    pytest.param(
        REGISTRY + "gc:\n  delete_untagged: maybe\n",
        "policies.yml:4 gc.delete_untagged: expected true or false, got 'maybe'",
        id="boolean given as a word",
    ),
    pytest.param(
        REGISTRY + "gc:\n  mode: dockr\n",
        "policies.yml:4 gc.mode: expected 'none', 'command' or 'docker', got 'dockr'",
        id="choice outside its set",
    ),
    pytest.param(
        REGISTRY + "state_dir: 5\n",
        "policies.yml:3 state_dir: expected a path, got 5",
        id="path given as a number",
    ),
    pytest.param(
        "registry:\n  url: http://127.0.0.1:5000\n  concurrency: 0\n",
        "policies.yml:3 registry.concurrency: must be >= 1",
        id="number below its minimum",
    ),
    pytest.param(
        "registry:\n  url: http://127.0.0.1:5000\n  concurrency: 300\n",
        "policies.yml:3 registry.concurrency: must be <= 256",
        id="number above its maximum",
    ),
    pytest.param(
        REGISTRY + "safety:\n  max_delete_fraction: 0\n",
        "policies.yml:4 safety.max_delete_fraction: must be > 0",
        id="fraction of zero",
    ),
    pytest.param(
        REGISTRY + "safety:\n  max_delete_fraction: 1.5\n",
        "policies.yml:4 safety.max_delete_fraction: must be <= 1",
        id="fraction above one",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - name: a\n    max_age: 30\n",
        "policies.yml:5 rules[0].max_age: 30 is not a duration (use 30d, 12h, 2w)",
        id="duration without a unit",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - name: a\n    max_age: 2024-01-01\n",
        "policies.yml:5 rules[0].max_age: '2024-01-01' is not a duration (use 30d, 12h, 2w)",
        id="a date is quoted as written, not as a Python object",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - name: a\n    keep_last: 1\n    match: '('\n",
        "policies.yml:6 rules[0].match: '(' is not a valid regex: "
        "missing ), unterminated subpattern at position 0",
        id="invalid regex",
    ),
    pytest.param(
        REGISTRY + "protect:\n  - latest\n  - 7\n",
        "policies.yml:5 protect[1]: 7 is not a regex string",
        id="regex given as a number",
    ),
    pytest.param(
        "registry:\n  url: ftp://example.com\n",
        "policies.yml:2 registry.url: 'ftp://example.com' is not a registry URL "
        "(use http://host:port or https://host)",
        id="url with the wrong scheme",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - name: a\n    match: 'v.*'\n",
        "policies.yml:4 rules[0]: a rule needs keep_last and/or max_age",
        id="rule without a limit",
    ),
    pytest.param(
        REGISTRY + "gc:\n  stop_command: []\n",
        "policies.yml:4 gc.stop_command: a command needs at least the program",
        id="empty command",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - {name: a, keep_last: 1}\n  - {name: a, keep_last: 2}\n",
        "policies.yml:1 rule name 'a' is used twice",
        id="model-wide error without a key path",
    ),
    pytest.param(
        REGISTRY + "schedule:\n  cron: '61 3 * * *'\n",
        "policies.yml:4 schedule.cron: '61 3 * * *' is not a valid crontab line: "
        "Error validating expression '61': the last value (61) is higher than the maximum "
        "value (59)",
        id="cron minute out of range",
    ),
    pytest.param(
        REGISTRY + "schedule:\n  cron: '0 3 * * often'\n",
        "policies.yml:4 schedule.cron: '0 3 * * often' is not a valid crontab line: "
        'Invalid weekday name "often"',
        id="cron weekday that is not one",
    ),
    pytest.param(
        REGISTRY + "schedule:\n  interval: 6h\n  timezone: Mars/Olympus\n",
        "policies.yml:5 schedule.timezone: 'Mars/Olympus' is not a time zone "
        "(use a name such as UTC or Europe/Berlin)",
        id="unknown time zone",
    ),
    pytest.param(
        REGISTRY + "schedule:\n  timezone: ../etc/passwd\n",
        "policies.yml:4 schedule.timezone: '../etc/passwd' is not a time zone "
        "(use a name such as UTC or Europe/Berlin)",
        id="time zone that is a path",
    ),
    pytest.param(
        REGISTRY + "in_use:\n  - file: /x\n    command: [a]\n",
        "policies.yml:4 in_use[0]: an in_use source needs exactly one of file, command and "
        "kubernetes (got file and command)",
        id="in_use source of two kinds",
    ),
    pytest.param(
        REGISTRY + "in_use:\n  - name: x\n",
        "policies.yml:4 in_use[0]: an in_use source needs exactly one of file, command and "
        "kubernetes",
        id="in_use source of no kind",
    ),
    pytest.param(
        REGISTRY + "in_use:\n  - kubernetes:\n      context: prod\n",
        "policies.yml:5 in_use[0].kubernetes.context: context needs kubeconfig too",
        id="kubernetes context without a kubeconfig",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - name: a\n    keep_last: 1\n    order_by: version\n",
        "policies.yml:6 rules[0].order_by: expected 'pushed', 'created' or 'semver', got 'version'",
        id="unknown order_by",
    ),
    pytest.param(
        REGISTRY + "rules:\n  - name: a\n    keep_last: 1\n    pulled_within: 0s\n",
        "policies.yml:6 rules[0].pulled_within: must be longer than 0s",
        id="pulled_within of zero",
    ),
    pytest.param(
        REGISTRY + "gate:\n  listen: 0.0.0.0\n  upstream: http://127.0.0.1:5001\n",
        "policies.yml:4 gate.listen: '0.0.0.0' is not host:port (e.g. 0.0.0.0:5000)",
        id="gate listen without a port",
    ),
    pytest.param(
        REGISTRY + "gate:\n  listen: 0.0.0.0:5000\n  upstream: 127.0.0.1:5001\n",
        "policies.yml:5 gate.upstream: '127.0.0.1:5001' is not a registry URL "
        "(use http://host:port or https://host)",
        id="gate upstream without a scheme",
    ),
    pytest.param(
        REGISTRY + "gate:\n  upstream: http://127.0.0.1:5001\n",
        "policies.yml:3 gate.listen: is required",
        id="gate without listen",
    ),
    pytest.param(
        REGISTRY + "server:\n  listen: 127.0.0.1:9090\n"
        "gate:\n  listen: 0.0.0.0:9090\n  upstream: http://127.0.0.1:5001\n",
        "policies.yml:6 gate: gate.listen and server.listen use the same port 9090",
        id="gate on the daemon's port",
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALIDATION_CASES)
def test_each_validation_error_becomes_one_line_with_file_line_and_key_path(
    text: str, expected: str
) -> None:
    assert problems(text) == [expected]


def test_every_mistake_in_the_gate_section_is_reported_at_once() -> None:
    text = REGISTRY + "gate:\n  listen: :5000\n  upstream: registry\n  drain_timeout: 5\n"
    assert problems(text) == [
        "policies.yml:4 gate.listen: ':5000' is not host:port (e.g. 0.0.0.0:5000)",
        "policies.yml:5 gate.upstream: 'registry' is not a registry URL "
        "(use http://host:port or https://host)",
        "policies.yml:6 gate.drain_timeout: 5 is not a duration (use 30d, 12h, 2w)",
    ]


def test_a_bad_cron_line_and_a_bad_time_zone_are_reported_together() -> None:
    text = REGISTRY + "schedule:\n  cron: '0 25 * * *'\n  timezone: Nowhere/City\n"
    assert [line.split(":", 2)[1] for line in problems(text)] == [
        "4 schedule.cron",
        "5 schedule.timezone",
    ]


def test_a_valid_cron_line_in_a_named_time_zone_loads() -> None:
    text = REGISTRY + "schedule:\n  cron: '30 2 * * sun'\n  timezone: Europe/Berlin\n"
    write(text)
    assert load_policy(FILE, {}).schedule.cron == "30 2 * * sun"


def test_an_invalid_duration_is_reported_on_its_own_line_with_an_indexed_path() -> None:
    text = """\
        # Retention for the build registry.
        registry:
          url: http://127.0.0.1:5000
        rules:
          - name: releases
            match: 'v.*'
            keep_last: 20

          - name: pull-requests
            match: 'pr-.*'
            max_age: 14d

          - name: nightlies
            max_age: 3x
        """
    assert problems(text) == [
        "policies.yml:14 rules[2].max_age: '3x' is not a duration (use 30d, 12h, 2w)"
    ]
    assert FILE.read_text().splitlines()[13].strip() == "max_age: 3x"


def test_several_errors_are_reported_at_once_sorted_by_line() -> None:
    text = """\
        gc:
          mode: sometimes
        registry:
          url: http://127.0.0.1:5000
          concurrency: many
        rules:
          - name: a
            keep_lst: 3
          - name: b
            max_age: 3x
        protect: ['(']
        """
    assert problems(text) == [
        "policies.yml:2 gc.mode: expected 'none', 'command' or 'docker', got 'sometimes'",
        "policies.yml:5 registry.concurrency: expected an integer, got 'many'",
        "policies.yml:8 rules[0]: unknown key 'keep_lst' (did you mean 'keep_last'?)",
        "policies.yml:10 rules[1].max_age: '3x' is not a duration (use 30d, 12h, 2w)",
        "policies.yml:11 protect[0]: '(' is not a valid regex: "
        "missing ), unterminated subpattern at position 0",
    ]


def test_pydantic_prefixes_are_never_shown() -> None:
    from retention.config.validate import _message  # the only path to a plain ValueError

    error = {
        "type": "value_error",
        "loc": ("x",),
        "msg": "Value error, bad thing",
        "input": 1,
        "ctx": {"error": "bad thing"},
    }
    assert _message(error, ("x",)) == "bad thing"  # type: ignore[arg-type]


# --- the file itself -------------------------------------------------------------------

FILE_CASES = [
    pytest.param(
        "registry:\n  url: [\n",
        "policies.yml:3 invalid YAML: while parsing a "
        "flow node, expected the node content, but found '<stream end>'",
        id="syntax error with its line",
    ),
    pytest.param(
        "registry:\n  url: x\n    bad: indent\n",
        "policies.yml:3 invalid YAML: mapping values are not allowed here",
        id="bad indentation",
    ),
    pytest.param(
        "",
        "policies.yml: the policy file is empty (it needs at least registry.url)",
        id="empty file",
    ),
    pytest.param(
        "# nothing here yet\n",
        "policies.yml: the policy file is empty (it needs at least registry.url)",
        id="only comments",
    ),
    pytest.param(
        "# a list\n- registry\n",
        "policies.yml:2 the top level must be a mapping of "
        "keys such as registry: and rules:, got a list",
        id="top level is a list",
    ),
    pytest.param(
        "hello\n",
        "policies.yml:1 the top level must be a mapping of keys such as "
        "registry: and rules:, got 'hello'",
        id="top level is a string",
    ),
    pytest.param(
        "a: 1\n---\nb: 2\n",
        "policies.yml:2 invalid YAML: expected a single "
        "document in the stream, but found another document",
        id="two documents",
    ),
    pytest.param(
        "registry: !!python/name:os.system x\n",
        "policies.yml:1 registry: could not "
        "determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'",
        id="unsafe tag",
    ),
]


@pytest.mark.parametrize(("text", "expected"), FILE_CASES)
def test_a_file_that_is_not_a_policy_mapping_gives_one_line(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_a_missing_file_is_a_config_error_naming_the_path() -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy(Path("nowhere.yml"), {})
    assert caught.value.problems == [
        "nowhere.yml: cannot read the policy file: No such file or directory"
    ]


def test_a_directory_is_a_config_error() -> None:
    Path("policies.d").mkdir()
    with pytest.raises(ConfigError, match=r"^policies\.d: cannot read the policy file: "):
        load_policy(Path("policies.d"), {})


def test_a_file_that_is_not_utf8_names_the_line_of_the_bad_byte() -> None:
    FILE.write_bytes(b"registry:\n  url: http://127.0.0.1:5000\n  username: \xff\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(FILE, {})
    assert caught.value.problems == ["policies.yml:3 the policy file is not UTF-8 text"]


def test_control_characters_are_a_yaml_error_with_their_line() -> None:
    assert problems("registry:\n  url: 'a\x07'\n") == [
        "policies.yml:2 invalid YAML: special characters are not allowed (character #x0007)"
    ]


# --- duplicate keys and anchors --------------------------------------------------------


def test_a_duplicated_section_is_an_error_and_the_first_one_is_still_checked() -> None:
    text = """\
        registry:
          url: http://127.0.0.1:5000
        rules:
          - name: a
            keep_lst: 3
        protect: [latest]
        rules:
          - name: b
            keep_last: 3
        """
    assert problems(text) == [
        "policies.yml:5 rules[0]: unknown key 'keep_lst' (did you mean 'keep_last'?)",
        "policies.yml:7 duplicate key 'rules' (first on line 3)",
    ]


def test_a_duplicated_key_inside_a_rule_names_the_rule() -> None:
    text = REGISTRY + "rules:\n  - name: a\n    keep_last: 3\n    keep_last: 5\n"
    assert problems(text) == [
        "policies.yml:6 rules[0]: duplicate key 'keep_last' (first on line 5)"
    ]


def test_a_key_overriding_a_merged_anchor_is_not_a_duplicate() -> None:
    text = """\
        registry:
          url: http://127.0.0.1:5000
        rules:
          - &short
            name: short
            max_age: 7d
            keep_last: 2
          - <<: *short
            name: shorter
            max_age: 1d
        """
    rules = load_policy(write(text), {}).rules
    assert [(r.name, r.keep_last, r.max_age) for r in rules] == [
        ("short", 2, timedelta(days=7)),
        ("shorter", 2, timedelta(days=1)),
    ]


def test_an_error_in_a_merged_value_points_at_where_it_is_written() -> None:
    text = """\
        registry:
          url: http://127.0.0.1:5000
        rules:
          - &base
            name: base
            keep_last: three
          - <<: *base
            name: copy
        """
    assert problems(text) == [
        "policies.yml:6 rules[0].keep_last: expected an integer, got 'three'",
        "policies.yml:6 rules[1].keep_last: expected an integer, got 'three'",
    ]


# --- environment variables -------------------------------------------------------------

EXPANSION_CASES = [
    pytest.param("${USER_NAME}", {"USER_NAME": "bob"}, "bob", id="whole value"),
    pytest.param("ci-${USER_NAME}-bot", {"USER_NAME": "bob"}, "ci-bob-bot", id="inside text"),
    pytest.param("${A}${B}", {"A": "x", "B": "y"}, "xy", id="two variables"),
    pytest.param("pa$$word", {}, "pa$word", id="double dollar is a dollar"),
    pytest.param("$${USER_NAME}", {"USER_NAME": "bob"}, "${USER_NAME}", id="escaped reference"),
    pytest.param("cost$ 5$", {}, "cost$ 5$", id="lone dollars stay"),
    pytest.param("${SECRET}", {"SECRET": "a${B}$$c"}, "a${B}$$c", id="values are not re-expanded"),
    pytest.param("${EMPTY}", {"EMPTY": ""}, "", id="empty variable"),
]


@pytest.mark.parametrize(("written", "environ", "expected"), EXPANSION_CASES)
def test_environment_variables_are_expanded_in_strings(
    written: str, environ: dict[str, str], expected: str
) -> None:
    text = REGISTRY + f"  username: '{written}'\n"
    assert loaded(text, environ).policy.registry.username == expected


def test_expanded_values_are_validated_as_if_written_in_place() -> None:
    text = """\
        registry:
          url: ${REGISTRY_URL}
          concurrency: ${CONCURRENCY}
        gc:
          command: [registry, garbage-collect, '${REGISTRY_CONFIG}']
        """
    environ = {
        "REGISTRY_URL": "http://10.0.0.1:5000",
        "CONCURRENCY": "16",
        "REGISTRY_CONFIG": "/etc/registry.yml",
    }
    policy = loaded(text, environ).policy
    assert policy.registry.url == "http://10.0.0.1:5000"
    assert policy.registry.concurrency == 16
    assert policy.gc.command == ("registry", "garbage-collect", "/etc/registry.yml")


def test_a_regex_ending_in_a_dollar_needs_no_escaping() -> None:
    text = REGISTRY + "rules:\n  - name: a\n    match: 'v\\d+$'\n    keep_last: 1\n"
    assert loaded(text).policy.rules[0].match.pattern == "v\\d+$"


def test_a_missing_variable_is_an_error_naming_it_and_hides_what_follows_from_it() -> None:
    text = """\
        registry:
          url: ${REGISTRY_URL}
          password: ${REGISTRY_PASSWORD}
        """
    assert problems(text, {"REGISTRY_PASSWORD": "s3cret"}) == [
        "policies.yml:2 registry.url: environment variable 'REGISTRY_URL' is not set",
    ]


def test_malformed_references_are_errors() -> None:
    text = REGISTRY + "  username: '${1X} and ${OPEN'\n"
    assert problems(text) == [
        "policies.yml:3 registry.username: '${1X}' is not a variable reference "
        "(write ${NAME}, or $${ for a literal ${)",
        "policies.yml:3 registry.username: '${OPEN' is not a variable reference "
        "(write ${NAME}, or $${ for a literal ${)",
    ]


def test_the_process_environment_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_TEST_USER", "carol")
    write(REGISTRY + "  username: ${RETENTION_TEST_USER}\n")
    assert load_policy(FILE).registry.username == "carol"


def test_keys_are_not_expanded() -> None:
    text = REGISTRY + "${KEY}: 1\n"
    assert problems(text, {"KEY": "rules"}) == ["policies.yml:3 unknown key '${KEY}'"]


# --- a valid file ----------------------------------------------------------------------


def test_a_full_valid_file_sets_every_section() -> None:
    text = """\
        registry:
          url: https://registry.example.com/
          username: retention
          password: ${REGISTRY_PASSWORD}
          concurrency: 4
          timeout: 1m
          retries: 0
        rules:
          - name: releases
            repositories: 'apps/.*'
            match: 'v\\d+'
            exclude: 'v0'
            keep_last: 10
            max_age: 2w
        protect: [latest, 'prod-.*']
        safety:
          max_deletions: 50
          max_delete_fraction: 0.5
        gc:
          mode: docker
          strategy: offline
          container: my-registry
          delete_untagged: false
          timeout: 30m
          docker_host: unix:///var/run/docker.sock
          command: [registry, garbage-collect, /etc/distribution/config.yml]
          ready_timeout: 2m
        storage:
          path: /srv/registry
        state_dir: /srv/retention
        """
    result = loaded(text, {"REGISTRY_PASSWORD": "s3cret"})
    policy = result.policy
    assert result.warnings == ()
    assert policy.registry.base_url == "https://registry.example.com"
    assert policy.registry.password is not None
    assert policy.registry.password.get_secret_value() == "s3cret"
    assert (policy.registry.concurrency, policy.registry.retries) == (4, 0)
    assert policy.registry.timeout == timedelta(minutes=1)
    rule = policy.rules[0]
    assert rule.claims("apps/web", "v12") and not rule.claims("apps/web", "v0")
    assert (rule.keep_last, rule.max_age) == (10, timedelta(weeks=2))
    assert policy.protecting_pattern("prod-1") == "prod-.*"
    assert (policy.safety.max_deletions, policy.safety.max_delete_fraction) == (50, 0.5)
    assert (policy.gc.mode, policy.gc.container) == ("docker", "my-registry")
    assert policy.gc.ready_timeout == timedelta(minutes=2)
    assert policy.storage.path == Path("/srv/registry")
    assert policy.state_dir == Path("/srv/retention")


# --- warnings --------------------------------------------------------------------------

ONE_RULE = [{"name": "r", "keep_last": 5}]

WARNING_CASES = [
    pytest.param({"rules": ONE_RULE}, [], id="a plain policy"),
    pytest.param({}, ["rules: there are no rules, so nothing will ever be deleted"], id="no rules"),
    pytest.param(
        {
            "rules": ONE_RULE,
            "gc": {"mode": "command", "stop_command": ["stop"], "start_command": ["start"]},
        },
        [],
        id="command that stops the registry",
    ),
    pytest.param({"rules": ONE_RULE, "gc": {"mode": "docker"}}, [], id="docker offline"),
    pytest.param(
        {
            "rules": [
                {"name": "all", "keep_last": 5},
                {"name": "old", "max_age": "1d"},
                {"name": "older", "max_age": "2d"},
            ]
        },
        [
            "rules[1]: rule 'old' can never claim a tag: rule 'all' before it claims every "
            "tag in every repository",
            "rules[2]: rule 'older' can never claim a tag: rule 'all' before it claims every "
            "tag in every repository",
        ],
        id="rules after a catch-all",
    ),
    pytest.param(
        {
            "rules": [
                {"name": "all", "keep_last": 5, "exclude": "latest"},
                {"name": "old", "max_age": "1d"},
            ]
        },
        [],
        id="a catch-all with an exclude lets tags fall through",
    ),
    pytest.param(
        {
            "rules": [
                {"name": "v", "match": "v.*", "keep_last": 5},
                {"name": "rest", "keep_last": 1},
            ]
        },
        [],
        id="a catch-all last is fine",
    ),
]


@pytest.mark.parametrize(("sections", "expected"), WARNING_CASES)
def test_risky_but_valid_settings_give_warnings(
    sections: dict[str, object], expected: list[str]
) -> None:
    policy: Policy = policy_from_mapping({"registry": {"url": "http://127.0.0.1:5000"}, **sections})
    assert check_warnings(policy) == expected


def test_loaded_warnings_carry_file_and_line() -> None:
    text = """\
        registry:
          url: http://127.0.0.1:5000
        rules:
          - name: all
            keep_last: 5
          - name: old
            max_age: 1d
        """
    assert loaded(text).warnings == (
        "policies.yml:6 rules[1]: rule 'old' can never claim a tag: rule 'all' before it "
        "claims every tag in every repository",
    )


def test_an_inline_password_is_a_warning_with_its_line() -> None:
    text = REGISTRY + "  username: ci\n  password: hunter2\nrules: [{name: r, keep_last: 5}]\n"
    assert loaded(text).warnings == (
        "policies.yml:4 registry.password: the password is written in the file; secrets "
        "belong in the environment (write password: ${REGISTRY_PASSWORD})",
    )


def test_a_password_from_the_environment_gives_no_warning() -> None:
    text = (
        REGISTRY
        + "  username: ci\n  password: ${REGISTRY_PASSWORD}\nrules: [{name: r, keep_last: 5}]\n"
    )
    assert loaded(text, {"REGISTRY_PASSWORD": "hunter2"}).warnings == ()


def test_warnings_never_stop_a_policy_from_loading() -> None:
    policy = load_policy(write(REGISTRY + "  password: hunter2\n"), {})
    assert policy.rules == ()


def test_error_lines_start_with_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "p.yml"
    path.parent.mkdir()
    path.write_text("registry: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(path, {})
    assert caught.value.problems == [f"{path}:1 registry.url: is required"]


def test_a_password_without_a_username_is_a_warning(tmp_path: Path) -> None:
    policy = tmp_path / "policies.yml"
    policy.write_text("registry:\n  url: http://127.0.0.1:5000\n  password: ${P}\n")
    loaded = load_policy_with_warnings(policy, {"P": "x"})
    assert f"{policy}:3 registry.password: is set without registry.username, so it is not used" in (
        loaded.warnings
    )
