"""Where a store lives (a path, sqlite:///, postgresql://) and how the one SQL text reaches PostgreSQL.

Pure logic; the same SQL against both real databases is tests/hub/test_store_on_both_backends.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.settings import HubSettings
from edgekit.sql import DatabaseUrlError, StoreLocation, parse_location, redact


@pytest.mark.parametrize(("given", "expected"), [
    (Path("state/hub.db"), StoreLocation("sqlite", path=Path("state/hub.db"))),
    ("/var/lib/edgehub/hub.db", StoreLocation("sqlite", path=Path("/var/lib/edgehub/hub.db"))),
    ("sqlite:///var/lib/edgehub/hub.db", StoreLocation("sqlite", path=Path("/var/lib/edgehub/hub.db"))),
    ("postgresql://hub@db.example:5432/edgehub",
     StoreLocation("postgresql", url="postgresql://hub@db.example:5432/edgehub")),
    ("postgres://hub@db.example/edgehub?sslmode=require",
     StoreLocation("postgresql", url="postgres://hub@db.example/edgehub?sslmode=require")),
])
def test_a_store_location_is_a_path_or_a_url(given: Path | str, expected: StoreLocation):
    assert parse_location(given) == expected


@pytest.mark.parametrize(("given", "message"), [
    ("", "store location is empty"),
    ("sqlite://hub.db", "sqlite:///ABSOLUTE/PATH"),
    ("sqlite:////hub.db", "sqlite:///ABSOLUTE/PATH"),
    ("mysql://db/hub", "unknown scheme 'mysql'"),
    ("postgresql://db.example", "names no database"),
    ("postgresql://db.example:54x/hub", "does not parse"),
])
def test_a_location_that_is_neither_is_refused_naming_it(given: str, message: str):
    with pytest.raises(DatabaseUrlError, match=message) as refused:
        parse_location(given)
    assert repr(given) in str(refused.value) or not given


def test_a_password_never_reaches_a_message():
    assert redact("postgresql://hub:s3cret@db.example/edgehub") == "postgresql://hub:***@db.example/edgehub"
    with pytest.raises(DatabaseUrlError) as refused:
        parse_location("postgresql://hub:s3cret@db.example")
    assert "s3cret" not in str(refused.value) and "hub:***@db.example" in str(refused.value)


def test_the_hub_setting_defaults_to_the_sqlite_file_in_its_state_dir_and_checks_a_given_url(tmp_path: Path):
    assert HubSettings(state_dir=tmp_path).store_location == StoreLocation("sqlite", path=tmp_path / "hub.db")
    url = "postgresql://hub@127.0.0.1:5432/edgehub"
    config = tmp_path / "hub.yaml"
    config.write_text(f"state_dir: state\nstore_url: {url}\n")
    assert HubSettings.from_file(config).store_location == StoreLocation("postgresql", url=url)
    with pytest.raises(ValueError, match="unknown scheme 'redis'"):
        HubSettings(state_dir=tmp_path, store_url="redis://127.0.0.1/0")


def test_sql_reaches_postgresql_with_its_placeholders_and_types():
    postgres = pytest.importorskip("edgekit.postgres", reason="psycopg not installed (the postgres extra)")
    assert postgres.to_pyformat("SELECT '?', \"a?\" FROM t WHERE x = ? AND y LIKE '5%' AND z % 2 = ?") == (
        "SELECT '?', \"a?\" FROM t WHERE x = %s AND y LIKE '5%' AND z %% 2 = %s")
    (table,) = postgres.translate_schema(
        "CREATE TABLE IF NOT EXISTS t (\n    n INTEGER NOT NULL,\n    at REAL,\n    data BLOB,\n"
        "    note TEXT DEFAULT 'INTEGER REAL',\n    PRIMARY KEY (n)\n);\n")
    assert table == ("CREATE TABLE IF NOT EXISTS t (\n    n BIGINT NOT NULL,\n    at DOUBLE PRECISION,\n"
                     "    data BYTEA,\n    note TEXT DEFAULT 'INTEGER REAL',\n    PRIMARY KEY (n),\n"
                     "    rowid BIGINT GENERATED ALWAYS AS IDENTITY)")
