"""The chain's canonical form: one definition, reproducible by anyone from the stored text."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.chain import GENESIS, canonical_json_entry, entry_hash

text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(seq=st.integers(min_value=1, max_value=2**62), ts=text, actor=text, role=text,
       tenant=text, origin=text, action=text, objects=text, details=text)
def test_fast_hash_equals_the_canonical_json_definition(seq, ts, actor, role, tenant, origin,
                                                        action, objects, details):
    fields = {"seq": seq, "ts": ts, "actor": actor, "role": role, "tenant": tenant,
              "origin": origin, "action": action, "objects": objects, "details": details}
    expected = hashlib.sha256(canonical_json_entry(GENESIS, fields).encode()).hexdigest()
    assert entry_hash(GENESIS, fields) == expected


def test_a_known_entry_hashes_to_a_published_value():
    """Pinned so that a change of the canonical form cannot pass unnoticed: old logs and
    offline verifiers depend on it."""
    fields = {"seq": 1, "ts": "2025-01-01T00:00:00.000000Z", "actor": "hanfu_owner",
              "role": "merchant", "tenant": "hanfu_house", "origin": "ip=127.0.0.1 ua=x",
              "action": "job.approve", "objects": '{"job":1}', "details": '{"note":"名字"}'}
    assert canonical_json_entry(GENESIS, fields) == (
        '{"action":"job.approve","actor":"hanfu_owner","details":"{\\"note\\":\\"名字\\"}",'
        '"objects":"{\\"job\\":1}","origin":"ip=127.0.0.1 ua=x","prev":"' + GENESIS + '",'
        '"role":"merchant","seq":1,"tenant":"hanfu_house","ts":"2025-01-01T00:00:00.000000Z"}')
    assert entry_hash(GENESIS, fields) == (
        "05a78cebe5fcf3b6ac5ec06f8f4a40d1f7a75b98d7673e565ec8a9d51fc5cb8d")


def test_damaged_rows_still_hash_without_crashing():
    fields = {"seq": 3, "ts": None, "actor": "a", "role": "r", "tenant": "t", "origin": "o",
              "action": "job.submit", "objects": "{}", "details": "{}"}
    assert len(entry_hash(GENESIS, fields)) == 64
