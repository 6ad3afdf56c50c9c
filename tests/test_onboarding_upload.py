"""Uploading merchant data: validation with Great Expectations, all-or-nothing, encrypted."""

from __future__ import annotations

import dataclasses
import gzip
import io
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onboarding_helpers import (
    audit_actions,
    files_holding,
    good_csv,
    hexdigest,
    populate,
    upload,
)
from sqlalchemy import select

from onboarding.errors import OnboardingError
from yushan.models import Dataset

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def home(tmp_path_factory, spark):
    from tests_config import module_config

    config = module_config(tmp_path_factory.mktemp("onboarding-home"))
    populate(config)
    return config


@pytest.fixture
def session(home):
    from yushan.db import session_factory

    s = session_factory(home)()
    yield s
    s.rollback()
    s.close()


def _name() -> str:
    return "ds_" + uuid.uuid4().hex[:8]


def _nothing_kept(home, session, name: str) -> None:
    assert session.scalar(select(Dataset).where(Dataset.name == name)) is None
    leftovers = [p for p in home.workspaces_dir.glob("upload-*")]
    assert leftovers == [], "an upload workspace was left behind"


def test_good_upload_is_encrypted_registered_and_readable_by_owner(home, session, spark):
    from sandbox.crypto import KeyStore
    from sandbox.storage import decrypt_dataset
    from yushan.catalog import readable_datasets

    marker = "MK" + uuid.uuid4().hex[:12]
    name = _name()
    result = upload(session, home, spark, "owner_a", name, good_csv(marker, 300).encode())

    ds = result.dataset
    assert ds.full_name == f"shop_a.{name}" and ds.row_count == 300
    assert ds.member_key == "member_id" and ds.encrypted and ds.wrapped_key
    assert [(c.name, c.data_type, c.column_class) for c in ds.columns] == [
        ("member_id", "string", "public"), ("phone_hash", "string", "public"),
        ("coupon", "string", "public"), ("value", "int", "public")]
    assert result.report.passed and {c.check for c in result.report.checks} >= {
        "well_formed", "type", "member_key_present", "member_key_unique", "hex64"}
    # No file under the home holds the values in the clear, the database included.
    assert files_holding(home.home, marker.encode()) == []
    assert sorted(p.suffix for p in (home.home / ds.storage_path).iterdir()) != []
    # The owner's jobs see it; another merchant's do not.
    assert f"shop_a.{name}" in readable_datasets(session, home, "shop_a")
    assert f"shop_a.{name}" not in readable_datasets(session, home, "shop_b")
    info = readable_datasets(session, home, "shop_a")[f"shop_a.{name}"]
    out = decrypt_dataset(KeyStore(home.master_key_path), info, home.home / "work" / f"t-{name}")
    table = pq.read_table(out)
    assert table.num_rows == 300 and set(table.column("coupon").to_pylist()) == {marker}
    assert table.schema.field("value").type == pa.int32()
    assert sorted(table.column("value").to_pylist())[-1] == 49
    import shutil

    shutil.rmtree(out)
    actions = audit_actions(session, dataset=f"shop_a.{name}")
    assert "dataset.upload" in actions and "dataset.validate" in actions
    _ws = list(home.workspaces_dir.glob("upload-*"))
    assert _ws == []


def test_bad_rows_are_rejected_whole_with_a_report_naming_checks_columns_and_rows(home, session, spark):
    marker = "MK" + uuid.uuid4().hex[:12]
    name = _name()
    content = good_csv(marker, 300) + f"m1,zz,dup,abc\n,{'0' * 64},x,1\nm999,{hexdigest()},x\n"
    with pytest.raises(OnboardingError) as caught:
        upload(session, home, spark, "owner_a", name, content.encode())
    exc = caught.value
    assert exc.status == 422
    failed = {(c["check"], c["column"]): c for c in exc.report["checks"] if not c["passed"]}
    assert failed[("member_key_unique", "member_id")]["failed_rows"] == 2
    assert failed[("member_key_unique", "member_id")]["first_rows"] == [3, 302]
    assert failed[("member_key_present", "member_id")]["first_rows"] == [303]
    assert failed[("type", "value")]["failed_rows"] == 1
    assert failed[("type", "value")]["first_rows"] == [302]
    assert failed[("hex64", "phone_hash")]["first_rows"] == [302]
    assert failed[("well_formed", None)]["first_rows"] == [304]
    assert "member_id" in exc.message and "value" in exc.message
    _nothing_kept(home, session, name)
    assert files_holding(home.home, marker.encode()) == []
    assert not (home.merchant_data_dir / "shop_a").exists() or all(
        p.name.isdigit() for p in (home.merchant_data_dir / "shop_a").iterdir())
    actions = audit_actions(session, action="dataset.reject")
    assert actions, "the rejection was not audited"


BAD_INPUTS = {
    "ragged rows": (b"member_id,phone_hash,coupon,value\nm1,%s,a,1\nm2,%s,a\n", "well_formed", 422),
    "wrong encoding": ("member_id,phone_hash,coupon,value\nm1,{h},优惠券,1\n".encode("gbk"),
                       "encoding", 422),
    "utf-16 text": ("member_id,phone_hash,coupon,value\n".encode("utf-16"), "encoding", 422),
    "10 MB single line": (b"member_id,phone_hash,coupon,value\nm1,%s," + b"x" * (10 * 1024 * 1024)
                          + b",1\n", "line_length", 422),
    "unclosed quote": (b'member_id,phone_hash,coupon,value\nm1,%s,"never closed,1\nm2,%s,a,1\n',
                       "well_formed", 422),
    "empty file": (b"", "not_empty", 422),
    "header only": (b"member_id,phone_hash,coupon,value\n", "not_empty", 422),
    "missing column": (b"member_id,phone_hash,value\nm1,%s,1\n", "header", 422),
    "undeclared column": (b"member_id,phone_hash,coupon,value,extra\nm1,%s,a,1,x\n", "header", 422),
    "gzip file": (gzip.compress(b"member_id,phone_hash,coupon,value\nm1,x,a,1\n"), "format", 422),
    "not a parquet file": (b"member_id\n", "format", 422),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_every_bad_input_kind_is_a_clear_error_and_nothing_is_kept(home, session, spark, kind):
    content, check, status = BAD_INPUTS[kind]
    while b"%s" in content:  # a distinct phone_hash per row (duplicates are refused)
        content = content.replace(b"%s", hexdigest().encode(), 1)
    encoding = "utf-8" if kind == "wrong encoding" else None
    if kind == "wrong encoding":
        content = content.replace(b"{h}", hexdigest().encode())
    filename = "data.parquet" if kind == "not a parquet file" else "data.csv"
    name = _name()
    with pytest.raises(OnboardingError) as caught:
        upload(session, home, spark, "owner_a", name, content, filename=filename,
               encoding=encoding)
    exc = caught.value
    assert exc.status == status
    assert [c["check"] for c in exc.report["checks"] if not c["passed"]] == [check]
    _nothing_kept(home, session, name)


def test_quoted_line_breaks_and_stray_quotes_are_read_as_spreadsheets_write_them(home, session, spark):
    """A CRM export: an address over two lines (CRLF inside quotes), a doubled quote, a
    12" screen in an unquoted field. Each record keeps its first line's number."""
    from sandbox.crypto import KeyStore
    from sandbox.storage import decrypt_dataset
    from yushan.catalog import readable_datasets

    h = [hexdigest() for _ in range(4)]
    content = (
        "member_id,phone_hash,coupon,value\r\n"
        f'm1,{h[0]},"Room 5,\r\nWest Lake Road",1\r\n'
        f'm2,{h[1]},"say ""hi""",2\r\n'
        f'm3,{h[2]},12" screen,3\r\n'
        f'm4,{h[3]},"a\n\nb",oops\r\n'
    ).encode()
    name = _name()
    with pytest.raises(OnboardingError) as caught:
        upload(session, home, spark, "owner_a", name, content)
    failed = {(c["check"], c["column"]): c for c in caught.value.report["checks"] if not c["passed"]}
    assert list(failed) == [("type", "value")]
    assert failed[("type", "value")]["first_rows"] == [6]  # m4 starts on line 6 of the file
    _nothing_kept(home, session, name)

    result = upload(session, home, spark, "owner_a", name, content.replace(b"oops", b"4"))
    assert result.dataset.row_count == 4
    info = readable_datasets(session, home, "shop_a")[f"shop_a.{name}"]
    out = decrypt_dataset(KeyStore(home.master_key_path), info, home.home / "work" / f"t-{name}")
    rows = {r["member_id"]: r["coupon"] for r in pq.read_table(out).to_pylist()}
    assert rows == {"m1": "Room 5,\r\nWest Lake Road", "m2": 'say "hi"', "m3": '12" screen', "m4": "a\n\nb"}
    import shutil

    shutil.rmtree(out)


@pytest.mark.parametrize("filename", ["../../etc/passwd.csv", "..\\x.csv", "a/b.csv", ".."])
def test_path_traversal_file_names_are_refused(home, session, spark, filename):
    name = _name()
    with pytest.raises(OnboardingError) as caught:
        upload(session, home, spark, "owner_a", name, good_csv("x", 3).encode(), filename=filename)
    assert caught.value.status == 400 and "plain name" in caught.value.message
    _nothing_kept(home, session, name)
    assert not (home.home.parent / "etc").exists()


def test_name_clash_is_409_and_bad_names_are_400(home, session, spark):
    name = _name()
    upload(session, home, spark, "owner_a", name, good_csv("x", 5).encode())
    with pytest.raises(OnboardingError) as caught:
        upload(session, home, spark, "owner_a", name, good_csv("y", 5).encode())
    assert caught.value.status == 409
    # Another merchant may use the same short name: names are per merchant.
    upload(session, home, spark, "owner_b", name, good_csv("z", 5).encode())
    for bad in ("Upper", "1abc", "a-b", "a.b", "x" * 64, ""):
        with pytest.raises(OnboardingError) as caught:
            upload(session, home, spark, "owner_a", bad, good_csv("x", 5).encode())
        assert caught.value.status == 400


def test_only_merchant_users_upload(home, session, spark):
    for username in ("isv_user", "admin"):
        with pytest.raises(OnboardingError) as caught:
            upload(session, home, spark, username, _name(), good_csv("x", 5).encode())
        assert caught.value.status == 403


def test_size_limit_is_413_and_nothing_kept(home, session, spark):
    small = dataclasses.replace(home, max_upload_bytes=1000)
    name = _name()
    with pytest.raises(OnboardingError) as caught:
        upload(session, small, spark, "owner_a", name, good_csv("x", 100).encode())
    assert caught.value.status == 413
    _nothing_kept(home, session, name)


def test_gbk_and_bom_files_are_detected_and_stored_as_text(home, session, spark):
    from sandbox.crypto import KeyStore
    from sandbox.storage import decrypt_dataset
    from yushan.catalog import dataset_info

    text = "member_id,phone_hash,coupon,value\r\n" + "".join(
        f"会员{i},{hexdigest()},满减券,{i}\r\n" for i in range(20))
    for content, expected in ((text.encode("gbk"), "gb18030"),
                              (b"\xef\xbb\xbf" + text.encode("utf-8"), "utf-8")):
        result = upload(session, home, spark, "owner_a", _name(), content)
        assert result.report.encoding == expected
        out = decrypt_dataset(KeyStore(home.master_key_path), dataset_info(home, result.dataset),
                              home.workspaces_dir / f"t-{result.dataset.id}")
        table = pq.read_table(out)
        assert table.column("coupon").to_pylist() == ["满减券"] * 20
        assert table.column("member_id").to_pylist()[0] == "会员0"
        import shutil

        shutil.rmtree(out)


def test_declared_gbk_on_a_utf8_file_with_bom_is_refused(home, session, spark):
    content = b"\xef\xbb\xbf" + good_csv("x", 3).encode()
    with pytest.raises(OnboardingError) as caught:
        upload(session, home, spark, "owner_a", _name(), content, encoding="gbk")
    assert caught.value.report["checks"][0]["check"] == "encoding"


def test_parquet_upload_and_optional_expectations(home, session, spark):
    table = pa.table({"member_id": [f"m{i}" for i in range(50)],
                      "points": pa.array(range(50), pa.int64()),
                      "tier": ["gold", "silver"] * 25})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    schema = {"member_key": "member_id", "columns": [
        {"name": "member_id", "type": "string"},
        {"name": "points", "type": "int", "expect": {"between": [0, 100]}},
        {"name": "tier", "type": "string", "expect": {"in_set": ["gold", "silver", "bronze"]}}]}
    result = upload(session, home, spark, "owner_a", _name(), sink.getvalue(), schema=schema,
                    filename="members.parquet")
    assert result.dataset.row_count == 50 and result.report.file_format == "parquet"
    strict = {**schema, "columns": [schema["columns"][0],
                                    {"name": "points", "type": "int", "expect": {"between": [0, 10]}},
                                    {"name": "tier", "type": "string", "expect": {"in_set": ["gold"]}}]}
    with pytest.raises(OnboardingError) as caught:
        upload(session, home, spark, "owner_a", _name(), sink.getvalue(), schema=strict,
               filename="members.parquet")
    failed = {(c["check"], c["column"]): c for c in caught.value.report["checks"] if not c["passed"]}
    assert failed[("between", "points")]["failed_rows"] == 39
    assert failed[("between", "points")]["first_rows"] == [12, 13, 14, 15, 16]
    assert failed[("in_set", "tier")]["failed_rows"] == 25


def test_bad_schema_is_400(home, session, spark):
    for schema in ({"member_key": "nope", "columns": [{"name": "a", "type": "string"}]},
                   {"member_key": "a", "columns": [{"name": "a", "type": "varchar"}]},
                   {"member_key": "a", "columns": [{"name": "_a", "type": "string"}]},
                   {"member_key": "a", "columns": []}):
        with pytest.raises(OnboardingError) as caught:
            upload(session, home, spark, "owner_a", _name(), b"a\n1\n", schema=schema)
        assert caught.value.status == 400


def test_the_merchant_upload_page_accepts_good_files_and_reports_bad_ones(home, session):
    import json

    from onboarding_helpers import PASSWORD, SCHEMA
    from web_support import csrf_from, page_login

    from web import create_app

    client = create_app(home).test_client()
    page_login(client, "owner_a", PASSWORD)
    page = client.get("/datasets/upload").get_data(as_text=True)
    assert 'id="upload-form"' in page and 'id="upload-progress"' in page
    csrf = csrf_from(page)

    def post(name: str, content: str, token: str | None = csrf):
        data = {"name": name, "schema": json.dumps(SCHEMA), "encoding": "auto",
                "file": (io.BytesIO(content.encode()), "members.csv")}
        if token:
            data["csrf_token"] = token
        return client.post("/datasets/upload", data=data, content_type="multipart/form-data")

    good_name, bad_name = _name(), _name()
    accepted = post(good_name, good_csv("PAGEMARK", rows=60))
    assert accepted.status_code == 201
    assert "Accepted and encrypted" in accepted.get_data(as_text=True)
    duplicate = good_csv("PAGEMARK", rows=60) + "m1," + hexdigest() + ",x,1\n"
    rejected = post(bad_name, duplicate)
    body = rejected.get_data(as_text=True)
    assert rejected.status_code == 422
    assert "Nothing was kept" in body and "member_id" in body and "PAGEMARK" not in body
    assert post(_name(), good_csv("PAGEMARK"), token=None).status_code == 400
    names = {d.full_name for d in session.scalars(select(Dataset).where(Dataset.withdrawn_at.is_(None)))}
    assert f"shop_a.{good_name}" in names and f"shop_a.{bad_name}" not in names
