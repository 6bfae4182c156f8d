"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

The connection form is declared here (``conn-fields`` / ``ui-field-behaviour``) rather than through
the hook methods deprecated in Airflow 3.2, so the UI can render it without importing the hook.
"""

from __future__ import annotations

from typing import Any

from overlaybd_provider import __version__

_OPT_STR: dict[str, Any] = {"type": ["string", "null"]}
_OPT_BOOL_FALSE: dict[str, Any] = {"type": ["boolean", "null"], "default": False}


def _registry_connection() -> dict[str, Any]:
    return {
        "connection-type": "oci_registry",
        "hook-class-name": "overlaybd_provider.hooks.registry.OciRegistryHook",
        "hook-name": "OCI Registry (overlaybd)",
        "conn-fields": {
            "plain_http": {
                "label": "Plain HTTP",
                "schema": dict(_OPT_BOOL_FALSE),
                "description": "Talk HTTP instead of HTTPS (local registries).",
            },
            "insecure": {
                "label": "Skip TLS verification",
                "schema": dict(_OPT_BOOL_FALSE),
                "description": "Accept any server certificate (self-signed test registries).",
            },
            "ca_cert": {
                "label": "CA certificate",
                "schema": dict(_OPT_STR),
                "description": "Path to a PEM bundle, or the PEM text itself.",
            },
            "client_cert": {
                "label": "Client certificate",
                "schema": dict(_OPT_STR),
                "description": "Path or PEM of the mutual-TLS client certificate.",
            },
            "client_key": {
                "label": "Client key",
                "schema": {"type": ["string", "null"], "format": "password"},
                "description": "Path or PEM of the mutual-TLS client key.",
            },
            "max_retries": {
                "label": "Retries per request",
                "schema": {"type": ["integer", "null"], "minimum": 0},
                "description": "Retries of one failed registry request (default 5); Airflow task retries come on top.",
            },
            "timeout": {
                "label": "Request timeout (s)",
                "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                "description": "Seconds for connect and for each read (default 60).",
            },
            "docker_config": {
                "label": "Docker config path",
                "schema": dict(_OPT_STR),
                "description": "A docker config.json to take credentials from when login is empty.",
            },
        },
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "port", "extra"],
            "relabeling": {"host": "Registry", "login": "Username", "password": "Password or token"},
            "placeholders": {
                "host": "registry.example.com:5000",
                "login": "robot$overlaybd",
                "ca_cert": "/etc/ssl/certs/registry-ca.pem",
                "docker_config": "~/.docker/config.json",
            },
        },
    }


def get_provider_info() -> dict[str, Any]:
    """Return the provider description Airflow validates against ``provider_info.schema.json``."""
    return {
        "package-name": "airflow-provider-overlaybd",
        "name": "overlaybd",
        "description": "Convert OCI images to containerd's overlaybd block-device format.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "overlaybd",
                "external-doc-url": "https://github.com/containerd/overlaybd",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "overlaybd",
                "python-modules": [
                    "overlaybd_provider.operators.stages",
                    "overlaybd_provider.operators.convert",
                    "overlaybd_provider.operators.verify",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": "overlaybd",
                "python-modules": [
                    "overlaybd_provider.hooks.registry",
                    "overlaybd_provider.hooks.dedup",
                ],
            }
        ],
        "sensors": [
            {"integration-name": "overlaybd", "python-modules": ["overlaybd_provider.sensors.tag"]}
        ],
        "triggers": [
            {"integration-name": "overlaybd", "python-modules": ["overlaybd_provider.triggers.tag_watch"]}
        ],
        "asset-uris": [{"schemes": ["oci"], "handler": "overlaybd_provider.asset_uri.normalize_uri"}],
        "connection-types": [_registry_connection()],
        "extra-links": ["overlaybd_provider.operators.links.OverlaybdImageLink"],
        "plugins": [{"name": "overlaybd", "plugin-class": "overlaybd_plugin.OverlaybdPlugin"}],
        "config": {
            "overlaybd": {
                "description": "Defaults of the overlaybd operators, DAGs and UI page.",
                "options": {
                    "staging_base": {
                        "description": "Where stages keep their files between tasks: a local directory, or "
                        "an object-storage URL (s3://conn@bucket/prefix) shared by all workers.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://aws_default@my-bucket/overlaybd-staging",
                        "default": None,
                    },
                    "staging_cache": {
                        "description": "Local cache of object-storage staging areas on each worker "
                        "(default: <tmp>/overlaybd-staging-cache).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/var/cache/overlaybd",
                        "default": None,
                    },
                    "dedup_conn_id": {
                        "description": "Connection of the dedup database (mysql); when it does not exist "
                        "an embedded SQLite file under AIRFLOW_HOME is used.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "overlaybd_dedup",
                        "default": "overlaybd_dedup",
                    },
                    "webhook_conn_id": {
                        "description": "Connection whose password is the shared token registries send to "
                        "POST /overlaybd/webhook (Authorization: Bearer <token>); at least 16 characters.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "overlaybd_webhook",
                        "default": "overlaybd_webhook",
                    },
                    "push_rules_variable": {
                        "description": "Airflow Variable holding the push rules (YAML or JSON): repository "
                        "globs to destination templates; see docs/convert-on-push.md.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "overlaybd_push_rules",
                        "default": "overlaybd_push_rules",
                    },
                    "push_rules_file": {
                        "description": "A YAML file with the push rules, used when the Variable does not exist.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/config/overlaybd_push_rules.yaml",
                        "default": None,
                    },
                    "sqlite_path": {
                        "description": "Embedded SQLite dedup database (default AIRFLOW_HOME/overlaybd/dedup.db).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/var/lib/overlaybd/dedup.db",
                        "default": None,
                    },
                },
            }
        },
    }
