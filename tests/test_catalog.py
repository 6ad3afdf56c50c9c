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
