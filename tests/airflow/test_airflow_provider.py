"""Provider registration: metadata schema, ProvidersManager, the `airflow providers`/`plugins` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from importlib.metadata import distribution, entry_points
from pathlib import Path

import jsonschema
from overlaybd_provider.get_provider_info import get_provider_info

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def _airflow_all(*commands: tuple[str, ...]) -> list[str]:
    """Run several ``airflow`` CLI commands at once (each takes seconds to start); their stdout."""
    procs = [
        subprocess.Popen(
            [AIRFLOW, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
        )
        for args in commands
    ]
    outputs = []
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"airflow {' '.join(args)}: {err[-2000:]}"
        outputs.append(out)
    return outputs


def test_provider_info_matches_airflow_schema_and_distribution():
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == distribution("airflow-provider-overlaybd").metadata["Name"]
    assert info["versions"][0] == distribution("airflow-provider-overlaybd").version
    conn = info["connection-types"][0]
    assert conn["connection-type"] == "oci_registry"
    assert set(conn["conn-fields"]) == {
        "plain_http",
        "insecure",
        "ca_cert",
        "client_cert",
        "client_key",
        "docker_config",
        "max_retries",
        "timeout",
    }
    assert conn["conn-fields"]["client_key"]["schema"]["format"] == "password"
    names = {e.name: e.value for e in entry_points(group="airflow.plugins")}
    assert names["overlaybd"] == "overlaybd_plugin:OverlaybdPlugin"


def test_providers_manager_registers_hook_form_and_behaviour():
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "airflow-provider-overlaybd" in pm.providers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ProvidersManager.hooks: deprecated alias, same data
        hook = pm.hooks["oci_registry"]
    assert hook.hook_class_name == "overlaybd_provider.hooks.registry.OciRegistryHook"
    assert hook.connection_id_attribute_name == "oci_registry_conn_id"
    widgets = pm.connection_form_widgets
    assert widgets["extra__oci_registry__plain_http"].field["schema"]["type"] == ["boolean", "null"]
    assert widgets["extra__oci_registry__client_key"].is_sensitive
    behaviour = pm.field_behaviours["oci_registry"]
    assert "extra" in behaviour["hidden_fields"]
    assert behaviour["relabeling"]["host"] == "Registry"


def test_airflow_cli_lists_provider_hooks_widgets_behaviours_and_plugin():
    listed, hooks, widgets, behaviours, links, plugins = _airflow_all(
        ("providers", "list", "--output", "plain"),
        ("providers", "hooks", "--output", "json"),
        ("providers", "widgets", "--output", "json"),
        ("providers", "behaviours", "--output", "json"),
        ("providers", "links", "--output", "plain"),
        ("plugins", "--output", "json"),
    )
    assert "airflow-provider-overlaybd" in listed
    assert any(h["connection_type"] == "oci_registry" for h in json.loads(hooks))
    ours = {
        w["connection_parameter_name"]: w
        for w in json.loads(widgets)
        if w["class"].startswith("overlaybd_provider.")
    }
    assert set(ours) >= {"extra__oci_registry__ca_cert", "extra__oci_registry__insecure"}
    assert ours["extra__oci_registry__insecure"]["field_type"] == ["boolean", "null"]
    assert {"field_behaviours": "oci_registry"} in json.loads(behaviours)
    assert "overlaybd_provider.operators.links.OverlaybdImageLink" in links
    # The plugins folder is the repository's plugins/: the entry point loads the plugin and
    # .airflowignore keeps the folder loader from registering it a second time.
    found = [p for p in json.loads(plugins) if p["name"] == "overlaybd"]
    assert len(found) == 1, plugins
    assert "airflow.plugins" in found[0]["source"]
    assert found[0]["react_apps"][0]["url_route"] == "overlaybd"
