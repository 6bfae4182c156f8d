"""Push rules: globs, template rendering, the DAG-run conf they produce, and rules refused at load."""

from __future__ import annotations

import json

import pytest
from overlaybd_provider.events.payloads import PushEvent
from overlaybd_provider.events.rules import (
    RuleError,
    glob_regex,
    loop_pattern,
    parse_rules,
    render,
    template_fields,
)

DIGEST = "sha256:" + "ab" * 32


def push(ref_repo: str = "team/app", tag: str = "v1.2", registry: str = "registry.example.com:5000") -> PushEvent:
    return PushEvent(kind="distribution", registry=registry, repository=ref_repo, tag=tag, digest=DIGEST)


RULES = """
fold_seconds: 0.5
defaults:
  src_registry_conn_id: reg_src
  dst_registry_conn_id: reg_dst
rules:
  - name: apps
    repository: ["team/*", "platform/**"]
    tags: ["v*", "latest"]
    exclude_tags: ["*-rc*"]
    destination: "{registry}/{repo}:{tag}-obd"
    format: both
    platforms: linux/amd64
    conf:
      algorithm: zstd
      block_size_kb: 8
      turbo_destination: "{registry}/{repo}:{tag}-turbo"
  - name: mirror
    registry: "registry.example.com:*"
    repository: "team/app"
    destination: "mirror.example.com/obd/{name}:{digest_short}"
"""


def test_globs_single_star_stays_in_one_path_component():
    assert glob_regex("team/*").match("team/app")
    assert not glob_regex("team/*").match("team/a/b")
    assert glob_regex("platform/**").match("platform/a/b/c")
    assert glob_regex("t?am/app").match("team/app") and not glob_regex("t?am/app").match("t/am/app")
    assert glob_regex("a.b/*").match("a.b/x") and not glob_regex("a.b/*").match("aXb/x")  # dots are literal


def test_template_fields_and_render():
    values = template_fields(push("platform/base/debian", "12"))
    assert values["name"] == "debian" and values["namespace"] == "platform/base"
    assert values["digest_hex"] == "ab" * 32 and values["digest_short"] == "ab" * 6
    assert render("{registry}/x/{name}:{tag}@{digest}", values) == f"registry.example.com:5000/x/debian:12@{DIGEST}"
    assert render("{{tag}}", values) == "{12}"  # no format-spec semantics: plain substitution


def test_rules_produce_the_dag_conf_with_defaults_and_rendered_passthrough():
    rules = parse_rules(RULES)
    assert rules.fold_seconds == 0.5 and [r.name for r in rules.rules] == ["apps", "mirror"]
    event = push()
    apps, mirror = rules.matching(event)
    conf = apps.run_conf(event)
    assert conf == {
        "source": f"registry.example.com:5000/team/app@{DIGEST}",
        "destination": "registry.example.com:5000/team/app:v1.2-obd",
        "turbo_destination": "registry.example.com:5000/team/app:v1.2-turbo",
        "format": "both",
        "platforms": ["linux/amd64"],
        "algorithm": "zstd",
        "block_size_kb": 8,
        "src_registry_conn_id": "reg_src",
        "dst_registry_conn_id": "reg_dst",
    }
    assert mirror.run_conf(event)["destination"] == "mirror.example.com/obd/app:" + "ab" * 6
    assert json.dumps(conf)  # JSON-able: it becomes DagRun.conf


@pytest.mark.parametrize(
    ("event", "names"),
    [
        (push(), ["apps", "mirror"]),
        (push(tag="v2.0-rc1"), ["mirror"]),  # excluded by apps, mirror takes every tag
        (push(tag="dev"), ["mirror"]),
        (push("team/other", "latest"), ["apps"]),
        (push("team/a/b", "v1"), []),  # * does not cross '/'
        (push("platform/a/b", "v1"), ["apps"]),
        (push(registry="other.example.com"), ["apps"]),  # mirror is for one registry only
    ],
)
def test_which_rules_match(event, names):
    assert [r.name for r in parse_rules(RULES).matching(event)] == names


def test_source_template_can_follow_the_tag_instead_of_the_digest():
    rules = parse_rules({"rules": [{"repository": "**", "source": "{registry}/{repo}:{tag}",
                                    "destination": "{registry}/obd/{repo}:{tag}"}]})
    assert rules.rules[0].name == "rule-0"
    assert rules.rules[0].run_conf(push())["source"] == "registry.example.com:5000/team/app:v1.2"


def test_loop_patterns_recognise_every_rendered_output():
    rules = parse_rules(RULES)
    for rule in rules.rules:
        for event in (push(), push("platform/a/b", "latest")):
            conf = rule.run_conf(event)
            for key in ("destination", "turbo_destination"):
                if key in conf:
                    out = conf[key]
                    assert any(p.match(out) for p in rule.loop_patterns()), (rule.name, out)
    outputs = [push(tag="v1.2-obd"), push(tag="v1.2-turbo"),
               push(registry="mirror.example.com", ref_repo="obd/app", tag="ab" * 6)]
    assert [rules.output_of(e) for e in outputs] == ["apps", "apps", "mirror"]
    assert rules.output_of(push()) is None and rules.output_of(push(tag="v1.2-obd2")) is None


def test_a_destination_without_tag_means_latest():
    assert loop_pattern("{registry}/obd/{repo}").match("r.example/obd/team/app:latest")
    assert not loop_pattern("{registry}/obd/{repo}").match("r.example/obd/team/app:v1")


def test_empty_rules_convert_nothing():
    for text in (None, "", "  \n", "rules: []"):
        rules = parse_rules(text)
        assert rules.rules == () and rules.matching(push()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [", "not valid YAML/JSON"),
        ("42", "must be a mapping"),
        ("rules: {a: 1}", "rules must be a list"),
        ("colour: red", "unknown top-level key"),
        ("rules: [{destination: 'x/{repo}:{tag}'}]", "repository (one glob or a list) is required"),
        ("rules: [{repository: a, destination: '{registry}/{repo}:{tag}'}]", "would match its own sources"),
        ("rules: [{repository: a, destination: '{registry}/{repo}:{tags}-obd'}]", "unknown template field {tags}"),
        ("rules: [{repository: a, destination: '{registry}/{repo}:{tag.__class__}'}]", "unknown template field"),
        ("rules: [{repository: a, destination: '{registry}/{repo}:{tag}}'}]", "unbalanced braces"),
        ("rules: [{repository: a, destination: '{registry}/{repo}:{tag}-obd', algorithm: zstd}]", "put DAG options under conf"),
        ("rules: [{repository: a, destination: '{registry}/{repo}:{tag}-obd', conf: {destination: x}}]", "not under conf"),
        ("rules: [{repository: a, destination: '{registry}/UPPER/{repo}:{tag}'}]", "lower case"),
        ("rules: [{name: x, repository: a, destination: 'r/{repo}:{tag}-1'}, {name: x, repository: b, destination: 'r/{repo}:{tag}-2'}]", "unique"),
        ("{fold_seconds: 600, rules: []}", "between 0 and 60"),
        ("rules: [{repository: a, destination: 'r/{repo}:{tag}-o', conf: {turbo_destination: '{registry}/{repo}:{tag}'}}]", "would match its own sources"),
    ],
)
def test_rules_that_cannot_work_are_refused_at_load(text, message):
    with pytest.raises(RuleError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(").replace(")", r"\)")):
        parse_rules(text)


def test_json_and_a_bare_list_are_accepted():
    doc = [{"repository": "team/*", "destination": "{registry}/{repo}:{tag}-obd"}]
    assert parse_rules(json.dumps(doc)).rules[0].destination == "{registry}/{repo}:{tag}-obd"
    assert parse_rules(json.dumps({"rules": doc})).fingerprint() == parse_rules(doc).fingerprint()
