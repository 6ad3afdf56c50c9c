"""Per-job catalogs: a job's session resolves exactly the datasets that job may read."""

from __future__ import annotations

import pytest
from pyspark.errors import AnalysisException

from sandbox.catalog import CATALOG_LOCK, install_catalog
from sandbox.crypto import KeyStore
from sandbox.storage import decrypt_dataset
from yushan.catalog import readable_datasets

pytestmark = pytest.mark.spark


def _not_found(spark, sql: str) -> str:
    with pytest.raises(AnalysisException) as info:
        spark.sql(sql).schema  # noqa: B018 - analysis only
    return info.value.getCondition()


def test_other_merchants_tables_look_missing(spark, demo_config, db_session):
    with CATALOG_LOCK:
        install_catalog(spark, readable_datasets(db_session, demo_config, "hanfu_house"))
        assert spark.sql("SELECT count(*) FROM platform.consumers").first()[0] == 1000
        # Encrypted merchant data is installed schema-only unless decrypted for a job.
        assert spark.sql("SELECT count(*) FROM hanfu_house.members").first()[0] == 0
        other = _not_found(spark, "SELECT * FROM tea_garden.members")
        missing = _not_found(spark, "SELECT * FROM tea_garden.no_such_table")
        assert other == missing == "TABLE_OR_VIEW_NOT_FOUND"

        install_catalog(spark, readable_datasets(db_session, demo_config, "tea_garden"))
        assert _not_found(spark, "SELECT * FROM hanfu_house.members") == "TABLE_OR_VIEW_NOT_FOUND"
        assert spark.sql("SELECT count(*) FROM tea_garden.members").first()[0] == 0


def test_decrypted_workspace_location_serves_the_rows(spark, demo_config, db_session, tmp_path):
    infos = readable_datasets(db_session, demo_config, "hanfu_house")
    plain = decrypt_dataset(KeyStore(demo_config.master_key_path), infos["hanfu_house.members"],
                            tmp_path / "members")
    with CATALOG_LOCK:
        install_catalog(spark, infos, {"hanfu_house.members": plain})
        assert spark.sql("SELECT count(DISTINCT member_id) FROM hanfu_house.members").first()[0] == 200


def test_temporary_views_do_not_survive_between_jobs(spark, demo_config, db_session):
    infos = readable_datasets(db_session, demo_config, "hanfu_house")
    with CATALOG_LOCK:
        install_catalog(spark, infos)
        spark.sql("SELECT 1 AS x").createOrReplaceTempView("leftover")
        install_catalog(spark, infos)
        assert _not_found(spark, "SELECT * FROM leftover") == "TABLE_OR_VIEW_NOT_FOUND"


def test_reinstalling_skips_nothing_that_changed(spark, demo_config, db_session, tmp_path):
    """Installing the same catalog again is a no-op, but a job's decrypted copy is reachable
    only during that job: the next installation points back at the schema-only table."""
    infos = readable_datasets(db_session, demo_config, "hanfu_house")
    plain = decrypt_dataset(KeyStore(demo_config.master_key_path), infos["hanfu_house.members"],
                            tmp_path / "members")
    members = "SELECT count(*) FROM hanfu_house.members"
    with CATALOG_LOCK:
        install_catalog(spark, infos)
        install_catalog(spark, infos)
        assert spark.sql(members).first()[0] == 0
        install_catalog(spark, infos, {"hanfu_house.members": plain})
        assert spark.sql(members).first()[0] == 200
        install_catalog(spark, infos)
        assert spark.sql(members).first()[0] == 0


def _catalog_contents(spark) -> dict[tuple[str, str], str]:
    """Every table of the session's catalog with its location, as the JVM holds them."""
    jcat = spark._jsparkSession.sessionState().catalog()
    found = {}
    for db in spark.sql("SHOW DATABASES").collect():
        name = db[0]
        if name == "default":
            continue
        for row in spark.sql(f"SHOW TABLES IN `{name}`").collect():
            ident = jcat.getTableMetadata(spark._jsparkSession.sessionState().sqlParser()
                                          .parseTableIdentifier(f"{name}.{row.tableName}"))
            found[(name, row.tableName)] = "/" + str(ident.location()).removeprefix("file:").lstrip("/")
    return found


def test_changes_between_installations_leave_exactly_the_wanted_catalog(spark, demo_config, db_session,
                                                                         tmp_path):
    """Installations after the first change only what differs (tables, locations, whole
    merchants); after each one of a long mixed sequence the catalog holds exactly what a
    fresh installation would: the wanted tables at the wanted locations, nothing else."""
    import random

    from sandbox.catalog import _installed

    merchants = {m: readable_datasets(db_session, demo_config, m) for m in ("hanfu_house", "tea_garden")}
    rng = random.Random(7)  # noqa: S311 - a reproducible test sequence, not a secret
    with CATALOG_LOCK:
        _installed.pop(spark, None)
        for step in range(14):
            merchant = rng.choice(sorted(merchants))
            infos = dict(merchants[merchant])
            if rng.random() < 0.3:  # a dataset withdrawn or not shared any more
                infos.pop(rng.choice(sorted(infos)))
            own = sorted(name for name, ds in infos.items() if ds.owner == merchant)
            locations = {}
            for name in own:
                if rng.random() < 0.5:
                    where = tmp_path / f"step{step}" / name
                    where.mkdir(parents=True)
                    locations[name] = where
            install_catalog(spark, infos, locations)
            contents = _catalog_contents(spark)
            assert set(contents) == {tuple(name.split(".", 1)) for name in infos}, step
            for name, ds in infos.items():
                where = contents[tuple(name.split(".", 1))]
                if name in locations:
                    assert where == str(locations[name]), (step, name)
                elif ds.encrypted:
                    assert where.endswith("_empty"), (step, name)
                else:
                    assert where == str(ds.storage_path), (step, name)
