"""Registry flags shared by every sub-command that talks to registries (inspect, convert, ...)."""

from __future__ import annotations

import argparse
from pathlib import Path

from overlaybd_provider.oci.options import PASSWORD_ENV, options_from_args

__all__ = ["PASSWORD_ENV", "add_registry_arguments", "registry_options_from_args"]

#: RegistryOptions from the flags below; lives in ``oci.options`` so that ``oci`` never imports ``cli``
registry_options_from_args = options_from_args


def add_registry_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("registry options")
    group.add_argument("-u", "--user", metavar="USER[:PASSWORD]",
                       help=f"registry credentials; without :PASSWORD it is read from ${PASSWORD_ENV}")
    group.add_argument("--plain-http", action="store_true", help="use plain HTTP instead of HTTPS")
    group.add_argument("-k", "--insecure", "--skip-verify", dest="skip_verify", action="store_true",
                       help="do not verify the registry's TLS certificate")
    group.add_argument("--tlscacert", type=Path, metavar="FILE", help="CA certificate(s) to trust (PEM)")
    group.add_argument("--tlscert", type=Path, metavar="FILE", help="client certificate (PEM)")
    group.add_argument("--tlskey", type=Path, metavar="FILE", help="client key (PEM)")
    group.add_argument("--cert-dir", type=Path, metavar="DIR",
                       help="certs.d directory: DIR/HOST[:PORT]/{ca.crt,*.crt,client.cert,client.key}")
    group.add_argument("--hosts-dir", type=Path, metavar="DIR",
                       help="containerd hosts directory: DIR/HOST[:PORT]/hosts.toml (mirrors, TLS)")
    group.add_argument("--docker-config", type=Path, metavar="FILE",
                       help="docker config.json with auths/credHelpers/credsStore (default $DOCKER_CONFIG)")
    group.add_argument("--refresh", metavar="TOKEN", help="OAuth2 refresh token for the registry's token server")
    group.add_argument("--http-dump", action="store_true", help="log HTTP requests and responses (secrets redacted)")
    group.add_argument("--http-trace", action="store_true", help="log DNS/connect/TLS/first-byte timings")
    group.add_argument("--max-retries", type=int, default=5, metavar="N", help="retries of a failing request")
    group.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="connect/read timeout")
    return parser
