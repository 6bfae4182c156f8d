"""The tag-watch trigger and sensor against a real registry (the trigger's loop run with asyncio,
as the triggerer runs it); its state across a restart; serialization; back-off bounds."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from support.registry import push_layout

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def reg_conn(registry, monkeypatch) -> str:
    monkeypatch.setenv(
        "AIRFLOW_CONN_REG_WATCH", f'{{"conn_type": "oci_registry", "host": "{registry.host}", "extra": {{"plain_http": true}}}}'
    )
    return "reg_watch"


def push_tag(registry, repo: str, tag: str, name: str, tmp_path: Path) -> str:
    layout = tmp_path / f"layout-{name}-{tag}"
    demo_image.make_image(layout, tag, demo_image.demo_layers(name, base="watch"))
    return push_layout(layout, registry.ref(repo, tag), registry.options()).descriptor.digest


class MemoryStateStore:
    """Stands in for the watched asset's state store (the DB-backed one is used by the live test)."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    async def aget(self, key, default=None):
        return self.values.get(key, default)

    async def aset(self, key, value):
        self.values[key] = value


async def next_event(gen, timeout: float = 20.0):
    return await asyncio.wait_for(gen.__anext__(), timeout)


def make_trigger(registry, repo, conn, **kwargs):
    from overlaybd_provider.triggers.tag_watch import OciTagWatchTrigger

    kwargs.setdefault("poll_interval", 0.2)
    kwargs.setdefault("max_backoff", 1.0)
    return OciTagWatchTrigger(repository=f"{registry.host}/{repo}", registry_conn_id=conn, **kwargs)


def test_watcher_fires_for_new_and_moved_tags_after_a_quiet_baseline(registry, registry_repo, reg_conn, tmp_path):
    old = push_tag(registry, registry_repo, "old", "a", tmp_path)
    trigger = make_trigger(registry, registry_repo, reg_conn, tags=["v*", "old"], exclude_tags=["*-obd"])
    trigger.asset_state_store = MemoryStateStore()

    async def scenario():
        gen = trigger.run()
        first = asyncio.ensure_future(next_event(gen))
        await asyncio.sleep(1.0)  # several polls: the baseline ("old") must not fire
        assert not first.done()
        digest = await asyncio.to_thread(push_tag, registry, registry_repo, "v1", "a", tmp_path)
        await asyncio.to_thread(push_tag, registry, registry_repo, "v1-obd", "a", tmp_path)  # excluded
        event = await first
        moved = await asyncio.to_thread(push_tag, registry, registry_repo, "old", "b", tmp_path)
        second = await next_event(gen)
        await gen.aclose()
        return digest, event.payload, moved, second.payload

    digest, payload, moved, payload2 = asyncio.run(scenario())
    trigger.close()
    assert payload["registry"] == registry.host and payload["repository"] == registry_repo
    assert payload["changes"] == [{"tag": "v1", "digest": digest, "previous": None}]
    assert payload2["changes"] == [{"tag": "old", "digest": moved, "previous": old}]
    # state is written when the loop resumes after handing an event over (at least once): the
    # first change is stored, the second (the generator was closed right after it) is not yet
    (stored,) = trigger.asset_state_store.values.values()
    assert stored["tags"] == {"old": old, "v1": digest}


def test_a_restarted_watcher_fires_for_what_changed_while_it_was_down(registry, registry_repo, reg_conn, tmp_path):
    store = MemoryStateStore()
    seen = push_tag(registry, registry_repo, "v1", "c", tmp_path)

    async def baseline():
        trigger = make_trigger(registry, registry_repo, reg_conn)
        trigger.asset_state_store = store
        gen = trigger.run()
        pending = asyncio.ensure_future(next_event(gen))
        for _ in range(100):
            if store.values:
                break
            await asyncio.sleep(0.05)
        pending.cancel()
        trigger.close()
        return trigger.state_key

    key = asyncio.run(baseline())
    assert store.values[key]["tags"] == {"v1": seen}
    new = push_tag(registry, registry_repo, "v2", "c", tmp_path)  # pushed while "down"

    async def restarted():
        trigger = make_trigger(registry, registry_repo, reg_conn)
        trigger.asset_state_store = store
        gen = trigger.run()
        event = await next_event(gen)
        await gen.aclose()
        trigger.close()
        return event.payload

    assert asyncio.run(restarted())["changes"] == [{"tag": "v2", "digest": new, "previous": None}]


def test_initial_all_fires_for_existing_tags_and_a_missing_repository_is_empty(registry, registry_repo, reg_conn, tmp_path):
    digest = push_tag(registry, registry_repo, "v1", "d", tmp_path)
    trigger = make_trigger(registry, registry_repo, reg_conn, initial="all", once=True)

    async def run_once():
        return [e.payload async for e in trigger.run()]

    (payload,) = asyncio.run(asyncio.wait_for(run_once(), 20))
    assert payload["changes"] == [{"tag": "v1", "digest": digest, "previous": None}]
    assert make_trigger(registry, f"{registry_repo}-absent", reg_conn).snapshot() == {}


def test_serialize_round_trip_and_argument_checks():
    from overlaybd_provider.triggers.tag_watch import OciTagWatchTrigger

    trigger = OciTagWatchTrigger(repository="reg.example:5000/team/app", registry_conn_id="r", tags=["v*"],
                                 poll_interval=30, known={"v1": "sha256:" + "a" * 64})
    path, kwargs = trigger.serialize()
    assert path == "overlaybd_provider.triggers.tag_watch.OciTagWatchTrigger"
    assert OciTagWatchTrigger(**kwargs).serialize() == (path, kwargs)
    for bad in ({"repository": "reg.example/team/app:v1"}, {"repository": "oci:/tmp/x"},
                {"repository": "r.example/a", "initial": "none"}, {"repository": "r.example/a", "poll_interval": 0}):
        with pytest.raises(ValueError):
            OciTagWatchTrigger(**bad)


def test_backoff_is_exponential_jittered_and_capped():
    from overlaybd_provider.triggers.tag_watch import backoff_delay, diff_tags, jittered

    for failures, ceiling in ((1, 10), (2, 20), (3, 40), (8, 300)):
        delays = [backoff_delay(failures, 10, 300) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 10  # jittered, not constant
    assert all(48 <= jittered(60) <= 72 for _ in range(200))
    assert diff_tags({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == [
        {"tag": "b", "digest": "3", "previous": "2"}, {"tag": "c", "digest": "4", "previous": None}
    ]


def test_sensor_succeeds_at_once_or_defers_to_the_trigger(registry, registry_repo, reg_conn, tmp_path):
    from airflow.sdk.exceptions import TaskDeferred
    from overlaybd_provider.sensors.tag import OciTagSensor

    digest = push_tag(registry, registry_repo, "v1", "e", tmp_path)
    present = OciTagSensor(task_id="present", reference=registry.ref(registry_repo, "v1"), registry_conn_id=reg_conn)
    assert present.execute({}) == {"reference": registry.ref(registry_repo, "v1"), "tag": "v1", "digest": digest,
                                   "previous": None}
    poking = OciTagSensor(task_id="poke", reference=registry.ref(registry_repo, "v1"), registry_conn_id=reg_conn,
                          deferrable=False)
    assert poking.poke({}).xcom_value["digest"] == digest
    moved = OciTagSensor(task_id="moved", reference=registry.ref(registry_repo, "v1"), digest_not=digest,
                         registry_conn_id=reg_conn, poke_interval=0.2)
    with pytest.raises(TaskDeferred) as deferred:
        moved.execute({})
    trigger = deferred.value.trigger
    assert trigger.once and trigger.known == {"v1": digest} and deferred.value.method_name == "execute_complete"
    new = push_tag(registry, registry_repo, "v1", "f", tmp_path)

    async def fire():
        return [e.payload async for e in trigger.run()]

    (payload,) = asyncio.run(asyncio.wait_for(fire(), 20))
    trigger.close()
    assert moved.execute_complete({}, payload) == {"reference": registry.ref(registry_repo, "v1"), "tag": "v1",
                                                   "digest": new, "previous": digest}
