"""The PostgreSQL fixtures that store tests run on: a real server, one fresh database a test, a password required."""

from urllib.parse import urlsplit

import pytest

psycopg = pytest.importorskip("psycopg")


def test_a_test_gets_a_database_it_can_write_to(postgres_url):
    parts = urlsplit(postgres_url)
    assert parts.scheme == "postgresql" and parts.hostname == "127.0.0.1" and parts.password
    with psycopg.connect(postgres_url) as connection:
        connection.execute("CREATE TABLE labels (id serial PRIMARY KEY, name text NOT NULL)")
        connection.execute("INSERT INTO labels (name) VALUES (%s), (%s)", ("Car", "Tree"))
        connection.commit()
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT name FROM labels ORDER BY id").fetchall() == [("Car",), ("Tree",)]


def test_two_databases_of_the_cluster_are_isolated(postgres_server, postgres_url):
    other = postgres_server.create_database("test_isolation_other")
    try:
        with psycopg.connect(postgres_url) as connection:
            connection.execute("CREATE TABLE only_here (x int)")
        with psycopg.connect(other) as connection:
            tables = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert other != postgres_url and tables == []
    finally:
        postgres_server.drop_database("test_isolation_other")


def test_the_server_refuses_a_wrong_password(postgres_url):
    parts = urlsplit(postgres_url)
    wrong = postgres_url.replace(f":{parts.password}@", ":not-the-password@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong)
    without = postgres_url.replace(f":{parts.password}@", "@")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(without, connect_timeout=5)


def test_database_url_gives_each_backend_its_store(database_url, request):
    if request.node.callspec.params["database_url"] == "sqlite":  # SQLite in the data folder, no cluster started
        assert database_url == "" and "postgres_server" not in request.fixturenames
    else:
        with psycopg.connect(database_url) as connection:
            assert connection.execute("SELECT current_database()").fetchone()[0].startswith("test_")
