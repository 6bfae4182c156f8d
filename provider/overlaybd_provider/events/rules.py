"""Push rules: which pushed images are converted, to where, with which DAG-run conf.

YAML or JSON (the Airflow Variable ``overlaybd_push_rules``, or a file)::

    fold_seconds: 2                       # burst window (default 2)
    dag_id: overlaybd_convert             # default DAG of every rule
    defaults:                             # merged into every rule
      src_registry_conn_id: registry_prod
      dst_registry_conn_id: registry_prod
    rules:
      - name: apps
        repository: ["team-*/**"]         # globs: * = one path part, ** = any depth
        registry: "registry.example.com"  # optional glob over the pushed-to host[:port]
        tags: ["v*", "latest"]            # optional globs (default: every tag)
        exclude_tags: ["*-rc*"]
        destination: "{registry}/{repo}:{tag}-obd"
        format: overlaybd                 # optional; passed as conf (the DAG decides)
        platforms: [linux/amd64]
        conf: {algorithm: zstd, turbo_destination: "{registry}/{repo}:{tag}-turbo"}

Template fields: ``{registry}``, ``{repo}`` (the whole repository path), ``{name}`` (its last
component), ``{namespace}`` (the rest), ``{tag}``, ``{digest}``, ``{digest_hex}``,
``{digest_short}`` (12 hex digits). Every rule that matches a push gives one conversion; the
source defaults to the pushed digest (``{registry}/{repo}@{digest}``), so a tag that moves again
while the run waits does not change what is converted.

Each destination template (and every ``*_destination`` conf template) also yields a *loop
pattern*: a pushed image matching any rule's pattern is our own output and is never converted.
A rule whose pattern matches its own sources is rejected when the rules are loaded.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.events.payloads import PushEvent
from overlaybd_provider.oci.errors import InvalidReferenceError
from overlaybd_provider.oci.reference import parse_reference

DEFAULT_DAG_ID = "overlaybd_convert"
DEFAULT_SOURCE = "{registry}/{repo}@{digest}"
DEFAULT_FOLD_SECONDS = 2.0
#: conf keys a rule may set directly (anything else goes under ``conf:``)
CONF_KEYS = ("format", "platforms", "src_registry_conn_id", "dst_registry_conn_id", "dedup_conn_id")
RULE_KEYS = frozenset(
    {"name", "repository", "registry", "tags", "exclude_tags", "destination", "source", "conf", "dag_id", *CONF_KEYS}
)
_FIELD_RE = re.compile(r"\{([^{}]*)\}")
#: what each template field may expand to, for loop patterns
FIELD_PATTERNS = {
    "registry": r"[^/]+",
    "repo": r"[a-z0-9._/-]+",
    "namespace": r"[a-z0-9._/-]+",
    "name": r"[a-z0-9._-]+",
    "tag": r"[\w.-]+",
    "digest": r"[a-z0-9]+:[a-fA-F0-9=_-]+",
    "digest_hex": r"[a-f0-9]+",
    "digest_short": r"[a-f0-9]{12}",
}
_SAMPLE = PushEvent(kind="sample", registry="registry.example", repository="team/app", tag="v1",
                    digest="sha256:" + "0" * 64)


class RuleError(OverlaybdError):
    """The push rules cannot be used (syntax, unknown field, loop)."""


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` = any characters but ``/``, ``**`` = anything, ``?`` = one character but ``/``."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def template_fields(event: PushEvent) -> dict[str, str]:
    namespace, _, name = event.repository.rpartition("/")
    _, _, hexpart = event.digest.partition(":")
    return {
        "registry": event.registry,
        "repo": event.repository,
        "name": name,
        "namespace": namespace,
        "tag": event.tag,
        "digest": event.digest,
        "digest_hex": hexpart,
        "digest_short": hexpart[:12],
    }


def check_template(template: str, where: str) -> str:
    if not isinstance(template, str) or not template.strip():
        raise RuleError(f"{where}: a template string is required")
    for name in _FIELD_RE.findall(template):
        if name not in FIELD_PATTERNS:
            raise RuleError(f"{where}: unknown template field {{{name}}} (known: {', '.join(FIELD_PATTERNS)})")
    if "{" in _FIELD_RE.sub("", template) or "}" in _FIELD_RE.sub("", template):
        raise RuleError(f"{where}: unbalanced braces in {template!r}")
    return template


def render(template: str, values: Mapping[str, str]) -> str:
    """Plain ``{field}`` substitution (no format specs, no attribute access)."""
    return _FIELD_RE.sub(lambda m: values[m.group(1)], template)


def loop_pattern(template: str) -> re.Pattern[str]:
    """A regex matching every reference ``template`` can render (a missing tag means ``latest``)."""
    parts, last = [], 0
    for m in _FIELD_RE.finditer(template):
        parts.append(re.escape(template[last:m.start()]))
        parts.append(f"(?:{FIELD_PATTERNS[m.group(1)]})")
        last = m.end()
    parts.append(re.escape(template[last:]))
    body = "".join(parts)
    tail = template.rsplit("/", 1)[-1]
    if ":" not in tail and "@" not in tail:
        body += "(?::latest)?"
    return re.compile("^" + body + "$")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RuleError(f"{where}: expected a string or a list of strings, got {value!r}")


@dataclass(frozen=True)
class Rule:
    name: str
    repositories: tuple[str, ...]
    destination: str
    registries: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    source: str = DEFAULT_SOURCE
    dag_id: str = DEFAULT_DAG_ID
    conf: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, event: PushEvent) -> bool:
        if self.registries and not any(glob_regex(g.lower()).match(event.registry) for g in self.registries):
            return False
        if not any(glob_regex(g).match(event.repository) for g in self.repositories):
            return False
        if self.tags and not any(fnmatch.fnmatchcase(event.tag, g) for g in self.tags):
            return False
        return not any(fnmatch.fnmatchcase(event.tag, g) for g in self.exclude_tags)

    def output_templates(self) -> list[str]:
        extra = [v for k, v in self.conf.items() if k.endswith("_destination") and isinstance(v, str)]
        return [self.destination, *extra]

    def loop_patterns(self) -> list[re.Pattern[str]]:
        return [loop_pattern(t) for t in self.output_templates()]

    def run_conf(self, event: PushEvent) -> dict[str, Any]:
        """The DAG-run conf for ``event`` (templates rendered, references validated)."""
        values = template_fields(event)
        conf: dict[str, Any] = {}
        for key, value in self.conf.items():
            conf[key] = render(value, values) if isinstance(value, str) else value
        conf["source"] = render(self.source, values)
        conf["destination"] = render(self.destination, values)
        for key in ("source", "destination", *(k for k in conf if k.endswith("_destination"))):
            if isinstance(conf.get(key), str):
                try:
                    parse_reference(conf[key])
                except InvalidReferenceError as exc:
                    raise RuleError(f"rule {self.name!r}: {key} {conf[key]!r}: {exc}") from None
        return conf


def _rule(raw: Any, index: int, defaults: Mapping[str, Any], dag_id: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise RuleError(f"rules[{index}] must be a mapping")
    doc = {**defaults, **raw}
    unknown = set(doc) - RULE_KEYS
    if unknown:
        raise RuleError(f"rules[{index}]: unknown key(s) {', '.join(sorted(unknown))} (put DAG options under conf:)")
    name = str(doc.get("name") or f"rule-{index}")
    where = f"rule {name!r}"
    repositories = _strings(doc.get("repository"), f"{where}.repository")
    if not repositories:
        raise RuleError(f"{where}: repository (one glob or a list) is required")
    conf = doc.get("conf") or {}
    if not isinstance(conf, Mapping):
        raise RuleError(f"{where}.conf must be a mapping")
    conf = {**{k: doc[k] for k in CONF_KEYS if doc.get(k) not in (None, "")}, **conf}
    if "platforms" in conf:
        conf["platforms"] = list(_strings(conf["platforms"], f"{where}.platforms"))
    for key in ("source", "destination"):
        if key in conf:
            raise RuleError(f"{where}: set {key} on the rule, not under conf")
    rule = Rule(
        name=name,
        repositories=repositories,
        destination=check_template(doc.get("destination"), f"{where}.destination"),
        registries=_strings(doc.get("registry"), f"{where}.registry"),
        tags=_strings(doc.get("tags"), f"{where}.tags"),
        exclude_tags=_strings(doc.get("exclude_tags"), f"{where}.exclude_tags"),
        source=check_template(doc.get("source") or DEFAULT_SOURCE, f"{where}.source"),
        dag_id=str(doc.get("dag_id") or dag_id),
        conf=conf,
    )
    for key, value in conf.items():
        if isinstance(value, str):
            check_template(value, f"{where}.conf.{key}")
    for template in rule.output_templates():
        if loop_pattern(template).match(_SAMPLE.ref):
            raise RuleError(f"{where}: destination {template!r} would match its own sources (a loop)")
    rule.run_conf(_SAMPLE)  # every template renders to a valid reference
    return rule


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    fold_seconds: float = DEFAULT_FOLD_SECONDS

    @property
    def loop_patterns(self) -> list[tuple[str, re.Pattern[str]]]:
        return [(r.name, p) for r in self.rules for p in r.loop_patterns()]

    def output_of(self, event: PushEvent) -> str | None:
        """Name of the rule whose destination pattern ``event`` matches (our own output), else None."""
        for name, pattern in self.loop_patterns:
            if pattern.match(event.ref):
                return name
        return None

    def matching(self, event: PushEvent) -> list[Rule]:
        return [r for r in self.rules if r.matches(event)]

    def fingerprint(self) -> str:
        doc = [(r.name, r.destination, sorted(r.conf.items(), key=str)) for r in self.rules]
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_rules(text: str | bytes | Mapping[str, Any] | list[Any] | None) -> RuleSet:
    """Rules from YAML/JSON text (or an already parsed document); empty text = no rules."""
    if text is None or (isinstance(text, (str, bytes)) and not text.strip()):
        return RuleSet()
    if isinstance(text, (Mapping, list)):
        doc: Any = text
    else:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RuleError(f"push rules are not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if isinstance(doc, list):
        doc = {"rules": doc}
    if not isinstance(doc, Mapping):
        raise RuleError("push rules must be a mapping with a 'rules' list (or the list itself)")
    unknown = set(doc) - {"rules", "defaults", "fold_seconds", "dag_id"}
    if unknown:
        raise RuleError(f"push rules: unknown top-level key(s) {', '.join(sorted(unknown))}")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise RuleError("push rules: defaults must be a mapping")
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_rules, list):
        raise RuleError("push rules: rules must be a list")
    dag_id = str(doc.get("dag_id") or DEFAULT_DAG_ID)
    rules = tuple(_rule(raw, i, defaults, dag_id) for i, raw in enumerate(raw_rules))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise RuleError("push rules: rule names must be unique")
    try:
        fold = float(doc.get("fold_seconds", DEFAULT_FOLD_SECONDS))
    except (TypeError, ValueError):
        raise RuleError("push rules: fold_seconds must be a number") from None
    if not 0 <= fold <= 60:
        raise RuleError("push rules: fold_seconds must be between 0 and 60")
    return RuleSet(rules=rules, fold_seconds=fold)
