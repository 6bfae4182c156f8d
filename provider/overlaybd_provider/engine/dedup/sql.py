"""SQL text of the dedup store, per dialect (image.md §6 schema, docs/dedup.md side tables).

``overlaybd_layers`` / ``overlaybd_manifests`` are upstream's tables, unchanged, so both
convertors can share one database. ``overlaybd_layer_formats`` / ``overlaybd_manifest_formats``
are ours: they mark which rows hold output of which converter format (docs/dedup.md).
"""

from __future__ import annotations

import re

__all__ = ["MYSQL", "SQLITE", "Dialect", "table_of"]

_LAYERS = """CREATE TABLE IF NOT EXISTS overlaybd_layers (
  host varchar(255) NOT NULL, repo varchar(255) NOT NULL, chain_id varchar(255) NOT NULL,
  data_digest varchar(255) NOT NULL, data_size bigint(20) NOT NULL,
  PRIMARY KEY (host, repo, chain_id){layers_key}){charset}"""
_MANIFESTS = """CREATE TABLE IF NOT EXISTS overlaybd_manifests (
  host varchar(255) NOT NULL, repo varchar(255) NOT NULL, src_digest varchar(255) NOT NULL,
  out_digest varchar(255) NOT NULL, data_size bigint(20) NOT NULL, mediatype varchar(255) NOT NULL,
  PRIMARY KEY (host, repo, src_digest, mediatype){manifests_key}){charset}"""
# Key columns are shorter than upstream's varchar(255) so the composite keys stay within
# InnoDB's 3072-byte limit in utf8; digests are 71 characters, format ids short.
_LAYER_FORMATS = """CREATE TABLE IF NOT EXISTS overlaybd_layer_formats (
  host varchar(255) NOT NULL, repo varchar(255) NOT NULL, chain_id varchar(100) NOT NULL,
  data_digest varchar(100) NOT NULL, format_id varchar(255) NOT NULL,
  PRIMARY KEY (host, repo, chain_id, data_digest){charset_close}"""
_MANIFEST_FORMATS = """CREATE TABLE IF NOT EXISTS overlaybd_manifest_formats (
  host varchar(255) NOT NULL, repo varchar(255) NOT NULL, src_digest varchar(100) NOT NULL,
  mediatype varchar(100) NOT NULL, out_digest varchar(100) NOT NULL, format_id varchar(255) NOT NULL,
  PRIMARY KEY (host, repo, src_digest, mediatype, out_digest){charset_close}"""

# Ours: what building a layer cost when it was done (the honest "time saved" of a reuse), and
# short leases so two runs converting the same new layer at once build it once.
_LAYER_COSTS = """CREATE TABLE IF NOT EXISTS overlaybd_layer_costs (
  chain_id varchar(100) NOT NULL, format_id varchar(255) NOT NULL,
  build_seconds double NOT NULL, source_bytes bigint NOT NULL,
  PRIMARY KEY (chain_id, format_id){charset_close}"""
_LAYER_LEASES = """CREATE TABLE IF NOT EXISTS overlaybd_layer_leases (
  host varchar(255) NOT NULL, chain_id varchar(100) NOT NULL, format_id varchar(255) NOT NULL,
  holder varchar(255) NOT NULL, expires_at bigint NOT NULL,
  PRIMARY KEY (host, chain_id, format_id){charset_close}"""


class Dialect:
    """The few statements that differ between MySQL/MariaDB and SQLite."""

    def __init__(self, name: str, placeholder: str, insert_ignore: str, create: tuple[str, ...],
                 list_tables: str) -> None:
        self.name = name
        self.placeholder = placeholder
        self.insert_ignore = insert_ignore
        self.create = create
        self.list_tables = list_tables

    def sql(self, text: str) -> str:
        """Statements are written with ``?``; MySQL drivers want ``%s``."""
        return text.replace("?", self.placeholder)

    def insert(self, table: str, columns: tuple[str, ...]) -> str:
        marks = ", ".join("?" for _ in columns)
        return self.sql(f"{self.insert_ignore} INTO {table} ({', '.join(columns)}) VALUES ({marks})")


MYSQL = Dialect(
    "mysql",
    "%s",
    "INSERT IGNORE",
    (
        _LAYERS.format(
            layers_key=",\n  KEY index_registry_chainId (host, chain_id)", charset=" DEFAULT CHARSET=utf8"
        ),
        _MANIFESTS.format(
            manifests_key=",\n  KEY index_registry_src_digest (host, src_digest)", charset=" DEFAULT CHARSET=utf8"
        ),
        _LAYER_FORMATS.format(charset_close=")\n DEFAULT CHARSET=utf8"),
        _MANIFEST_FORMATS.format(charset_close=")\n DEFAULT CHARSET=utf8"),
        _LAYER_COSTS.format(charset_close=")\n DEFAULT CHARSET=utf8"),
        _LAYER_LEASES.format(charset_close=")\n DEFAULT CHARSET=utf8"),
    ),
    "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
)

SQLITE = Dialect(
    "sqlite",
    "?",
    "INSERT OR IGNORE",
    (
        _LAYERS.format(layers_key="", charset=""),
        "CREATE INDEX IF NOT EXISTS index_registry_chainId ON overlaybd_layers (host, chain_id)",
        _MANIFESTS.format(manifests_key="", charset=""),
        "CREATE INDEX IF NOT EXISTS index_registry_src_digest ON overlaybd_manifests (host, src_digest)",
        _LAYER_FORMATS.format(charset_close=")"),
        _MANIFEST_FORMATS.format(charset_close=")"),
        _LAYER_COSTS.format(charset_close=")"),
        _LAYER_LEASES.format(charset_close=")"),
    ),
    "SELECT name FROM sqlite_master WHERE type = 'table'",
)

_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS `?(\w+)`?", re.IGNORECASE)


def table_of(statement: str) -> str | None:
    """The table a ``CREATE TABLE`` statement creates (lower case), None for other statements."""
    m = _CREATE_TABLE.match(statement.strip())
    return m.group(1).lower() if m else None


# Lookups join upstream's row with our format marker: a row without a marker (written by
# upstream or by an incompatible version of ours) is never reused.
LAYER_SAME_REPO = """SELECT l.repo, l.data_digest, l.data_size FROM overlaybd_layers l
  JOIN overlaybd_layer_formats f ON f.host = l.host AND f.repo = l.repo AND f.chain_id = l.chain_id
   AND f.data_digest = l.data_digest
  WHERE l.host = ? AND l.repo = ? AND l.chain_id = ? AND f.format_id = ?"""
LAYER_OTHER_REPOS = """SELECT l.repo, l.data_digest, l.data_size FROM overlaybd_layers l
  JOIN overlaybd_layer_formats f ON f.host = l.host AND f.repo = l.repo AND f.chain_id = l.chain_id
   AND f.data_digest = l.data_digest
  WHERE l.host = ? AND l.chain_id = ? AND l.repo <> ? AND f.format_id = ? ORDER BY l.repo"""
LAYER_DELETE = "DELETE FROM overlaybd_layers WHERE host = ? AND repo = ? AND chain_id = ? AND data_digest = ?"
LAYER_FORMAT_DELETE = (
    "DELETE FROM overlaybd_layer_formats WHERE host = ? AND repo = ? AND chain_id = ? AND data_digest = ?"
)
MANIFEST_SAME_REPO = """SELECT m.repo, m.out_digest, m.data_size FROM overlaybd_manifests m
  JOIN overlaybd_manifest_formats f ON f.host = m.host AND f.repo = m.repo AND f.src_digest = m.src_digest
   AND f.mediatype = m.mediatype AND f.out_digest = m.out_digest
  WHERE m.host = ? AND m.repo = ? AND m.src_digest = ? AND m.mediatype = ? AND f.format_id = ?"""
MANIFEST_OTHER_REPOS = """SELECT m.repo, m.out_digest, m.data_size FROM overlaybd_manifests m
  JOIN overlaybd_manifest_formats f ON f.host = m.host AND f.repo = m.repo AND f.src_digest = m.src_digest
   AND f.mediatype = m.mediatype AND f.out_digest = m.out_digest
  WHERE m.host = ? AND m.src_digest = ? AND m.mediatype = ? AND m.repo <> ? AND f.format_id = ?
  ORDER BY m.repo"""
MANIFEST_DELETE = (
    "DELETE FROM overlaybd_manifests WHERE host = ? AND repo = ? AND src_digest = ? AND mediatype = ?"
    " AND out_digest = ?"
)
MANIFEST_FORMAT_DELETE = (
    "DELETE FROM overlaybd_manifest_formats WHERE host = ? AND repo = ? AND src_digest = ? AND mediatype = ?"
    " AND out_digest = ?"
)
COST_SELECT = "SELECT chain_id, build_seconds FROM overlaybd_layer_costs WHERE format_id = ? AND chain_id IN ({marks})"
LEASE_TAKE = """UPDATE overlaybd_layer_leases SET holder = ?, expires_at = ?
  WHERE host = ? AND chain_id = ? AND format_id = ? AND (holder = ? OR expires_at < ?)"""
LEASE_HOLDER = "SELECT holder, expires_at FROM overlaybd_layer_leases WHERE host = ? AND chain_id = ? AND format_id = ?"
LEASE_RELEASE = "DELETE FROM overlaybd_layer_leases WHERE host = ? AND chain_id = ? AND format_id = ? AND holder = ?"
