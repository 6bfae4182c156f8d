"""Root of the exception hierarchy.

Every error a user can cause (bad input, registry refusal, corrupt blob...) derives from
:class:`OverlaybdError`; the CLI prints its message as one line and exits with status 2.
Each layer (formats, ext4, oci, engine) defines its own subclasses next to its code.
"""

from __future__ import annotations


class OverlaybdError(Exception):
    """An error caused by input or environment, reported to the user as one line.

    ``retryable`` says whether running the same thing again may succeed: False (the default) for
    what only a change of input or configuration fixes (bad reference, auth refused, not found,
    a corrupt or lying source, invalid options); True for transient trouble (a registry that is
    down or overloaded, a lost database connection). Orchestrators fail the first kind at once
    and retry the second."""

    retryable: bool = False
    #: key of :data:`REMEDIES` when the message ends with advice that names a CLI flag: front ends
    #: other than the CLI show their own wording (:func:`message_for`)
    remedy: str | None = None


#: The same advice in each front end's words: ``{key: {"cli": ..., "airflow": ...}}``. The
#: ``cli`` text is what the exception message carries.
REMEDIES: dict[str, dict[str, str]] = {
    "plain_http": {
        "cli": "use --plain-http or an http:// hosts.toml server",
        "airflow": "set the extra plain_http to true in the oci_registry connection",
    },
    "tls_trust": {
        "cli": "pass --tlscacert, --cert-dir or --hosts-dir (or -k to skip verification)",
        "airflow": "give the oci_registry connection the extra ca_cert (a path or the PEM text), "
                   "or set its extra insecure to true",
    },
    "client_cert": {
        "cli": "pass --tlscert/--tlskey or --cert-dir",
        "airflow": "give the oci_registry connection the extras client_cert and client_key",
    },
    "credentials": {
        "cli": "check -u USER:PASSWORD or --docker-config",
        "airflow": "check the login and password of the oci_registry connection",
    },
}


def message_for(exc: BaseException, frontend: str) -> str:
    """``str(exc)`` with its advice in ``frontend``'s words (``"cli"`` or ``"airflow"``)."""
    custom = getattr(exc, "for_frontend", None)
    if callable(custom):
        return str(custom(frontend))
    text = str(exc)
    key = getattr(exc, "remedy", None)
    if key in REMEDIES and frontend in REMEDIES[key]:
        text = text.replace(REMEDIES[key]["cli"], REMEDIES[key][frontend])
    return text
