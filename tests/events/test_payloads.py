"""Reading registry notifications: real distribution envelopes and Harbor webhooks, and what is
rejected as malformed (nothing of a rejected body is used)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from overlaybd_provider.events.payloads import DISTRIBUTION, HARBOR, PayloadError, parse_notification

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "notifications"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def body(doc) -> bytes:
    return json.dumps(doc).encode()


def test_captured_distribution_manifest_push_is_one_tagged_event():
    note = parse_notification(body(sample("distribution-2.8.2-manifest-push.json")))
    assert note.kind == DISTRIBUTION and note.ignored == []
    (event,) = note.events
    assert (event.registry, event.repository, event.tag) == ("127.0.0.1:18932", "team/app", "v1")
    assert event.digest == "sha256:db3aea31135f5d308df1ea318de147696a02544cf8cda51ea39b1ea69eb99b6f"
    assert event.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert event.user_agent == "skopeo/1.9.3" and event.scheme == "http"
    assert event.ref == "127.0.0.1:18932/team/app:v1"
    assert event.pinned == "127.0.0.1:18932/team/app@" + event.digest


def test_captured_blob_push_and_pull_are_ignored_quietly():
    for name, reason in (
        ("distribution-2.8.2-blob-push.json", "not an image manifest (application/octet-stream)"),
        ("distribution-2.8.2-pull.json", "action 'pull', not a push"),
    ):
        note = parse_notification(body(sample(name)))
        assert note.events == []
        (ignored,) = note.ignored
        assert ignored.reason == reason and ignored.quiet


def test_docs_envelope_manifest_by_digest_and_layers_give_no_event():
    note = parse_notification(body(sample("distribution-docs-envelope.json")))
    assert note.events == []
    reasons = [i.reason for i in note.ignored]
    assert reasons[0] == "pushed by digest, no tag"  # its layers carry a 66-digit "digest": never read
    assert note.ignored[0].what.startswith("example.com/library/test@sha256:fea88")  # host from target.url
    assert reasons[1:] == ["not an image manifest (application/vnd.docker.container.image.rootfs.diff+x-gtar)"] * 2


def test_docs_pull_example_is_ignored():
    note = parse_notification(body(sample("distribution-docs-pull.json")))
    assert note.events == [] and note.ignored[0].reason == "action 'pull', not a push"


def test_distribution_falls_back_to_request_host_and_keeps_the_actor():
    doc = sample("distribution-2.8.2-manifest-push.json")
    event = doc["events"][0]
    del event["target"]["url"]
    event["request"]["host"] = "Registry.Example.com:5000"
    event["actor"] = {"name": "ci-bot"}
    (got,) = parse_notification(body(doc)).events
    assert got.registry == "registry.example.com:5000" and got.actor == "ci-bot" and got.scheme is None


def test_harbor_default_sample():
    note = parse_notification(body(sample("harbor-default-push.json")))
    assert note.kind == HARBOR
    (event,) = note.events
    assert (event.registry, event.repository, event.tag) == ("hub.harbor.com", "test-webhook/debian", "latest")
    assert event.digest == "sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8"
    assert event.media_type is None and event.actor == "admin"


def test_harbor_captured_delivery():
    (event,) = parse_notification(body(sample("harbor-default-push-captured.json"))).events
    assert event.ref == "hb.nicolas.my.id/library/rumput:v1"


def test_harbor_cloudevent_pushed_by_digest_is_ignored_and_a_tagged_one_is_read():
    doc = sample("harbor-cloudevents-push.json")
    note = parse_notification(body(doc))
    assert note.kind == HARBOR and note.events == []
    assert note.ignored[0].reason == "pushed by digest, no tag"
    tagged = copy.deepcopy(doc)
    res = tagged["data"]["resources"][0]
    res["tag"], res["resource_url"] = "3.20", "localhost/harbor/alpine:3.20"
    (event,) = parse_notification(body(tagged)).events
    assert (event.registry, event.repository, event.tag) == ("localhost", "harbor/alpine", "3.20")
    assert event.event_id == "66e18103-09c1-41f6-982f-37df223f3eeb" and event.actor == "harbor-jobservice"


def test_harbor_events_other_than_push_are_ignored():
    doc = sample("harbor-default-push.json")
    doc["type"] = "SCANNING_COMPLETED"
    note = parse_notification(body(doc))
    assert note.events == [] and note.ignored[0].reason == "not an artifact push"
    ce = sample("harbor-cloudevents-push.json")
    ce["type"] = "harbor.artifact.deleted"
    assert parse_notification(body(ce)).ignored[0].reason == "not an artifact push"


def _dist(**target) -> dict:
    doc = sample("distribution-2.8.2-manifest-push.json")
    doc["events"][0]["target"].update(target)
    return doc


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "the body is not JSON"),
        (b"\xff\xfe", "the body is not JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'{"hello": "world"}', "not a registry notification"),
        (b'{"events": {"a": 1}}', "events must be a list"),
        (b'{"events": [42]}', "events[0] must be a JSON object"),
        (b'{"events": [{"action": "push"}]}', "events[0].target must be a JSON object"),
        (body(_dist(digest="sha256:1234")), "invalid digest"),
        (body(_dist(digest=None)), "events[0].target.digest is missing"),
        (body(_dist(repository="Team/App")), "repository names must be lower case"),
        (body(_dist(repository="team/app:v1")), "carries a tag or digest"),
        (body(_dist(tag="bad tag!")), "invalid tag"),
        (body(_dist(tag=7)), "tag must be a string"),
        (body({"events": [{"action": 3, "target": {}}]}), "events[0].action must be a string"),
        (body({"type": "PUSH_ARTIFACT", "event_data": {"resources": [], "repository": {"repo_full_name": "a/b"}}}),
         "resources must be a non-empty list"),
        (body({"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"digest": "sha256:" + "a" * 64}],
                                                        "repository": {"repo_full_name": "a/b"}}}),
         "resource_url is missing"),
        (body({"specversion": "1.0", "type": "harbor.artifact.pushed", "data": "x"}), "data must be a JSON object"),
    ],
)
def test_malformed_bodies_are_rejected_whole(raw, message):
    with pytest.raises(PayloadError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_notification(raw)


def test_one_bad_event_rejects_the_envelope():
    doc = sample("distribution-2.8.2-manifest-push.json")
    good = doc["events"][0]
    bad = copy.deepcopy(good)
    bad["target"]["digest"] = "sha256:zz"
    doc["events"] = [good, bad]
    with pytest.raises(PayloadError, match=r"events\[1\]"):
        parse_notification(body(doc))


def test_error_messages_do_not_echo_long_values():
    with pytest.raises(PayloadError) as err:
        parse_notification(body(_dist(tag="x" * 5000 + "!")))
    assert len(str(err.value)) < 200
