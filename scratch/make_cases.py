"""Writes tests/policy_cases/adversary2.json: attacks that got through the v2 engine (and
legitimate analyses it wrongly denies), found with scratch/harness.py on the demo world."""

import json
from pathlib import Path

P = ("c.gender = 'F' AND c.birth_year = 1980 AND c.city = 'Hangzhou' "
     "AND c.registered_at = DATE'2023-08-07'")
TOK = "6f7e4e88802c40fe257f3cba57eb67de3d396cae797d65ce4c0a0b6de3996636"
W = (f"(SELECT c.user_id, c.city, CASE WHEN {P} THEN c.vip_level * 1000000 ELSE 1 END AS w "
     "FROM platform.consumers c WHERE c.city = 'Hangzhou')")
PADDED = ("platform.consumers c2 RIGHT JOIN (platform.orders o JOIN platform.consumers c "
          "ON o.user_id = c.user_id) ON c2.user_id = c.user_id AND c2.city = 'Lhasa'")
WIN = (f"SELECT o.user_id, sum(CASE WHEN {P} THEN o.amount END) OVER (PARTITION BY c2.user_id) AS w "
       f"FROM {PADDED}")
B = "SELECT count(*) AS n FROM platform.consumers c WHERE "
ROLLUP_1 = ("SELECT bucket, count(*) AS n FROM (SELECT o.user_id, CASE WHEN sum(o.amount) >= 10000 "
            "THEN 'big' ELSE 'small' END AS bucket FROM platform.orders o JOIN platform.consumers c "
            "ON o.user_id = c.user_id WHERE c.city = 'Hangzhou' GROUP BY o.user_id) GROUP BY bucket")
ROLLUP_2 = ("SELECT city, round(avg(s), 2) AS a FROM (SELECT c.user_id, c.city, sum(o.amount) AS s "
            "FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id "
            "GROUP BY c.user_id, c.city) GROUP BY city")

T = "T (user 2200000000754 at scale 0.05: F/1980/Hangzhou/registered 2023-08-07, vip 5, spend 14076.75)"

cases = [
    # -- threshold: one consumer weighted (P3's bare-argument rule walked around) ----------------
    ("adv2-p3-weight-projected-sum", "aggregate", "threshold", ["P3"],
     f"SELECT sum(w) AS s, count(DISTINCT user_id) AS n FROM {W}",
     f"the weight is computed in a subquery, so sum's argument is a bare column: released 5000851 = {T}'s vip 5 x 1e6 + 851 (exact, one job)"),
    ("adv2-p3-weight-projected-spend", "aggregate", "threshold", ["P3"],
     "SELECT sum(w) AS s, count(DISTINCT user_id) AS n FROM (SELECT o.user_id, o.amount * CASE WHEN "
     f"{P} THEN 1000000 ELSE 1 END AS w FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id "
     "WHERE c.city = 'Hangzhou')",
     "released 14085149923.61; minus the Hangzhou total 8414000.36, divided by 999999 = 14076.75, T's exact spend"),
    ("adv2-p3-weight-projected-avg", "aggregate", "threshold", ["P3"],
     f"SELECT avg(w) AS a FROM {W}", "avg over a projected weight: 5869.54 * 852 - 851 = 5e6: T's vip"),
    ("adv2-p3-weight-projected-stddev", "aggregate", "threshold", ["P3"],
     f"SELECT stddev_pop(w) AS sd, count(*) AS n FROM {W}", "one weighted outlier dominates the spread"),
    ("adv2-p3-weight-projected-having", "aggregate", "threshold", ["P3"],
     f"SELECT city, count(*) AS n FROM {W} GROUP BY city HAVING sum(w) >= 5000000",
     "the row is released iff T's vip >= 5 (released: Hangzhou 852)"),
    ("adv2-p3-weight-per-unit-rollup", "aggregate", "threshold", ["P3"],
     f"SELECT sum(w) AS s FROM (SELECT c.user_id, CASE WHEN max(CASE WHEN {P} THEN 1 ELSE 0 END) = 1 THEN "
     "sum(c.vip_level) * 1000000 ELSE 1 END AS w FROM platform.consumers c WHERE c.city = 'Hangzhou' GROUP BY c.user_id)",
     "docs call per-consumer values a known limit, but it discloses one consumer exactly in ONE job: 5000851"),
    ("adv2-p3-weight-per-unit-window", "aggregate", "threshold", ["P3"],
     f"SELECT sum(w) AS s FROM (SELECT o.user_id, CASE WHEN {P} THEN 1000000 ELSE 1 END * sum(o.amount) "
     "OVER (PARTITION BY o.user_id) AS w FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id "
     "WHERE c.city = 'Hangzhou')", "a per-consumer window carries the weight"),
    # -- threshold: fan-out on equality keys ---------------------------------------------------
    ("adv2-p6-fanout-literal-generator-quasi-keys", "aggregate", "threshold", ["P6", "P3"],
     "SELECT sum(c.vip_level) AS s, count(DISTINCT c.user_id) AS n FROM platform.consumers c LEFT JOIN "
     "(SELECT inline(array_repeat(struct('F' AS g, 1980 AS y, DATE'2023-08-07' AS r), 100000))) w "
     "ON c.gender = w.g AND c.birth_year = w.y AND c.registered_at = w.r WHERE c.city = 'Hangzhou'",
     "adv-p6-weight-by-literal-generator-join fixed the key-less join only: with equality keys on quasi "
     "columns T meets 100000 rows: 502055 = 2060 + 5 x 99999 -> vip 5"),
    ("adv2-p6-fanout-merchant-nonunique-link-column", "aggregate", "threshold", ["P6", "P3", "P1"],
     "SELECT sum(c.vip_level) AS s, count(DISTINCT c.user_id) AS n FROM platform.consumers c LEFT JOIN "
     "hanfu_house.store_sales s ON c.phone_hash = s.member_id WHERE c.city = 'Hangzhou'",
     "phone_hash joined to a merchant column that is not named phone_hash, so nothing checked it is "
     "distinct. With an uploaded table holding T's phone_hash 20000 times (tried: hanfu_house.boost) "
     "the release was 102055 = 2060 + 5 x 19999; the same on o.user_id = <bigint column of T's id> gave "
     "T's exact spend. store_sales.member_id stands in for the uploaded column here"),
    # -- segment_token as a targeting key (P1) -----------------------------------------------------
    ("adv2-p1-token-where-differencing", "aggregate", "threshold", ["P1"],
     f"SELECT sum(c.vip_level) AS s, count(*) AS n FROM platform.consumers c WHERE c.city = 'Hangzhou' "
     f"AND segment_token(c.user_id) <> '{TOK}'",
     "a token from an earlier segment job decides a filter: 2060 - 2055 = the token owner's vip"),
    ("adv2-p1-token-where-dp", "aggregate", "dp", ["P1"],
     f"SELECT count(*) AS n, sum(c.vip_level) AS s FROM platform.consumers c WHERE segment_token(c.user_id) = '{TOK}'",
     "segment_token() is only allowed as a segment job's member; here it selects one consumer"),
    ("adv2-p1-token-fanout-join", "aggregate", "threshold", ["P1", "P6"],
     "SELECT sum(t.vip_level) AS s, count(DISTINCT t.user_id) AS n FROM (SELECT c.user_id, c.vip_level, "
     "segment_token(c.user_id) AS tk FROM platform.consumers c WHERE c.city = 'Hangzhou') t LEFT JOIN "
     f"(SELECT explode(array_repeat('{TOK}', 100000)) AS x) g ON t.tk = g.x",
     "the token owner meets 100000 rows: 502055 -> vip 5 in one job"),
    ("adv2-p1-token-where-segment", "segment", None, ["P1"],
     f"SELECT c.city AS segment, segment_token(c.user_id) AS member FROM platform.consumers c "
     f"WHERE segment_token(c.user_id) <> '{TOK}'", "tokens differencing inside one merchant's jobs"),
    # -- P4: a window partitioned by the padded (NULL) entity of an outer join -------------------
    ("adv2-p4-window-padded-entity", "aggregate", "threshold", ["P4"],
     f"SELECT w, count(*) AS n FROM ({WIN}) GROUP BY w",
     "every c2.user_id is NULL, so the 'per-consumer' window spans all consumers: released (14076.75, 50000) = T's exact spend as a group key"),
    ("adv2-p4-window-padded-entity-dp", "aggregate", "dp", ["P4"],
     f"SELECT w, count(*) AS n FROM ({WIN}) GROUP BY w",
     "dp mode releases the same key exactly (14076.75, ~47648): thousands of units carry one consumer's value through partition selection"),
    ("adv2-p4-window-padded-entity-dp-vip", "aggregate", "dp", ["P4"],
     f"SELECT w, count(*) AS n FROM (SELECT c.user_id, sum(CASE WHEN {P} THEN c.vip_level END) OVER (PARTITION BY c2.user_id) AS w "
     "FROM platform.consumers c2 RIGHT JOIN platform.consumers c ON c2.user_id = c.user_id AND c2.city = 'Lhasa') GROUP BY w",
     "dp: released (5, ~5000): T's vip as an exact group key"),
    ("adv2-p4-window-padded-per-unit-rollup-dp", "aggregate", "dp", ["P4"],
     f"SELECT w, count(*) AS n FROM (SELECT c.user_id, sum(CASE WHEN {P} THEN c.vip_level END) OVER (PARTITION BY t.user_id) AS w "
     "FROM platform.consumers c LEFT JOIN (SELECT o.user_id, count(*) AS k FROM platform.orders o WHERE o.merchant_id = 'nosuch' "
     "GROUP BY o.user_id) t ON t.user_id = c.user_id) GROUP BY w",
     "the padded side is a per-consumer rollup of another dataset: dp released (5, ~4964), T's vip (threshold suppressed it only because it counted the padded entity)"),
    ("adv2-p4-window-padded-entity-segment", "segment", None, ["P4"],
     f"SELECT cast(sum(CASE WHEN {P} THEN c.vip_level END) OVER (PARTITION BY c2.user_id) AS string) AS segment, "
     "segment_token(c.user_id) AS member FROM platform.consumers c LEFT JOIN platform.consumers c2 "
     "ON c.user_id = c2.user_id AND c2.city = 'Lhasa'",
     "every member is labelled '5', T's vip"),
    ("adv2-p4-window-padded-rownum", "aggregate", "threshold", ["P4"],
     f"SELECT r = 1 AS first, sum(vip_level) AS s, count(*) AS n FROM (SELECT c.user_id, c.vip_level, "
     f"row_number() OVER (PARTITION BY c2.user_id ORDER BY CASE WHEN {P} THEN 0 ELSE 1 END, c.registered_at) AS r "
     "FROM platform.consumers c2 RIGHT JOIN platform.consumers c ON c2.user_id = c.user_id AND c2.city = 'Lhasa') GROUP BY 1",
     "ranking across consumers below the release step"),
    # -- segments ------------------------------------------------------------------------------
    ("adv2-seg-padding-unmatched-members", "segment", None, ["P3", "P4"],
     "SELECT CASE WHEN c.city IS NULL OR (m.member_id = 'HF00000005' AND c.vip_level >= 5) THEN 'A' ELSE 'B' END "
     "AS segment, m.member_id AS member FROM hanfu_house.members m LEFT JOIN platform.consumers c ON m.phone_hash = c.phone_hash",
     "segment 'A' = 408 members that are no consumer + the target member: k counts members, not consumers, "
     "so a segment of ONE consumer is released and answers any predicate on that member's consumer data"),
    ("adv2-seg-padding-right-join", "segment", None, ["P3", "P4"],
     "SELECT CASE WHEN c.city IS NULL OR (m.member_id = 'HF00000005' AND c.vip_level >= 5) THEN 'A' ELSE 'B' END "
     "AS segment, m.member_id AS member FROM platform.consumers c RIGHT JOIN hanfu_house.members m ON m.phone_hash = c.phone_hash",
     "same padding with a right join"),
    ("adv2-seg-multilabel-generator-bits", "segment", None, ["P6", "P4"],
     "SELECT concat('b', cast(t.b AS string), '=', cast(shiftright(datediff(c.registered_at, DATE'2008-01-01'), t.b) & 1 AS string)) "
     "AS segment, m.member_id AS member FROM hanfu_house.members m JOIN platform.consumers c ON m.phone_hash = c.phone_hash "
     "LATERAL VIEW explode(sequence(0, 12)) t AS b",
     "each member gets 13 labels (26 segments of >= 238): their bits give every member's exact registration date"),
    ("adv2-seg-multilabel-inline-literal", "segment", None, ["P6", "P4"],
     "SELECT concat('b', cast(t.b AS string), '=', cast(shiftright(c.birth_year - 1950, t.b) & 1 AS string)) AS segment, "
     "segment_token(c.user_id) AS member FROM platform.consumers c LATERAL VIEW inline(array(struct(0 AS b), struct(1 AS b), "
     "struct(2 AS b), struct(3 AS b), struct(4 AS b), struct(5 AS b))) t", "exact birth_year per token"),
    ("adv2-seg-multilabel-equi-join", "segment", None, ["P6", "P4"],
     "SELECT concat('b', cast(t.b AS string), '=', cast(shiftright(c.birth_year - 1950, t.b) & 1 AS string)) AS segment, "
     "segment_token(c.user_id) AS member FROM platform.consumers c JOIN (SELECT g, b FROM (VALUES ('F'), ('M')) x(g) "
     "LATERAL VIEW explode(sequence(0, 5)) s AS b) t ON t.g = c.gender", "the same through an equality join"),
    ("adv2-seg-cross-unit-member-key-entity", "segment", None, ["P4"],
     "SELECT CASE WHEN t1.v >= 4 THEN 'hi' ELSE 'lo' END AS segment, segment_token(t2.user_id) AS member FROM "
     "(SELECT m.member_id, sum(c.vip_level) AS v FROM hanfu_house.members m JOIN platform.consumers c ON m.phone_hash = c.phone_hash "
     "GROUP BY m.member_id) t1 JOIN (SELECT cast(c2.user_id AS string) AS uid, c2.user_id FROM platform.consumers c2) t2 ON t1.member_id = t2.uid",
     "a member key grouped after a phone_hash link is taken as the entity and 'equated' with another consumer's "
     "cast(user_id AS string): with an uploaded member table whose keys are other consumers' ids (tried: "
     "hanfu_house.pairs) all 1000 tokens of X were labelled with Y's vip"),
    # -- P8: failures that answer a predicate --------------------------------------------------
    ("adv2-p8-case-guard-element-at", "aggregate", "threshold", ["P8"],
     B + f"CASE WHEN {P} THEN element_at(array(1), 0) ELSE 1 END > 0",
     "element_at's arguments are literals, but the CASE evaluates it only on T's row: fails iff T exists"),
    ("adv2-p8-case-guard-element-at-dp", "aggregate", "dp", ["P8"],
     B + f"CASE WHEN {P} THEN element_at(array(1), 0) ELSE 1 END > 0", "same in dp mode"),
    ("adv2-p8-case-guard-split-part", "aggregate", "dp", ["P8"],
     B + f"CASE WHEN {P} THEN split_part('a,b', ',', 0) ELSE 'x' END IS NOT NULL",
     "adv-p8-split-part-index-zero with the literal index moved inside the guarded branch"),
    ("adv2-p8-case-guard-map-dup-keys", "aggregate", "dp", ["P8"],
     B + f"CASE WHEN {P} THEN size(map_from_arrays(array(1, 1), array(1, 2))) ELSE 1 END > 0",
     "DUPLICATED_MAP_KEY only on T's row"),
    ("adv2-p8-case-guard-from-json-failfast", "aggregate", "dp", ["P8"],
     B + f"CASE WHEN {P} THEN from_json('{{', 'a INT', map('mode', 'FAILFAST')) ELSE NULL END IS NULL",
     "malformed record only on T's row"),
    ("adv2-p8-case-guard-decode-utf8", "aggregate", "dp", ["P8"],
     B + f"CASE WHEN {P} THEN decode(unhex('FF'), 'UTF-8') ELSE 'x' END IS NOT NULL",
     "MALFORMED_CHARACTER_CODING only on T's row"),
    ("adv2-p8-case-guard-sequence-oom", "aggregate", "dp", ["P8"],
     B + f"CASE WHEN {P} THEN size(sequence(1, 2000000000)) ELSE 1 END > 0",
     "OutOfMemoryError in the driver/executor only on T's row"),
    ("adv2-p8-case-guard-array-repeat-oom", "aggregate", "threshold", ["P8"],
     B + f"CASE WHEN {P} THEN size(array_repeat(1, 2000000000)) ELSE 1 END > 0", "OOM only on T's row"),
    ("adv2-p8-case-guard-run-time", "aggregate", "dp", ["P8"],
     B + f"CASE WHEN {P} THEN aggregate(sequence(1, 4000), 0L, (a, x) -> a + aggregate(sequence(1, 4000), 0L, (b, y) -> b + y)) ELSE 0 END >= 0",
     "16M lambda steps only on T's row: ~2 s slower when T exists (scale with the sequence length)"),
    ("adv2-p8-groupkey-case-guard", "aggregate", "dp", ["P8"],
     f"SELECT CASE WHEN {P} THEN element_at(array(1), 0) ELSE 1 END AS k, count(*) AS n FROM platform.consumers c GROUP BY 1",
     "the guard in a group key"),
    ("adv2-p8-segment-label-case-guard", "segment", None, ["P8"],
     f"SELECT CASE WHEN {P} THEN split_part('a,b', ',', 0) ELSE c.city END AS segment, segment_token(c.user_id) AS member FROM platform.consumers c",
     "the guard in a segment label"),
    ("adv2-p8-final-select-before-k", "aggregate", "threshold", ["P8", "P3"],
     f"SELECT count(*) AS n, if(count(*) = 1, element_at(array(1), 0), 1) AS x FROM platform.consumers c WHERE {P}",
     "SELECT-list expressions of the final Aggregate run on every group before the k filter: fails iff the (suppressed) group has exactly one consumer"),
    ("adv2-p8-final-select-value-before-k", "aggregate", "threshold", ["P8", "P3"],
     f"SELECT count(*) AS n, if(sum(c.vip_level) >= 5, element_at(array(1), 0), 1) AS x FROM platform.consumers c WHERE {P}",
     "fails iff T's vip >= 5, although the row would be suppressed"),
]

out = []
for cid, kind, release, rules, sql, note in cases:
    case = {"id": cid, "kind": kind, "sql": sql, "expect": "deny", "rules": rules, "note": note}
    if release == "dp":
        case["release"] = "dp"
    out.append(case)

out += [
    {"id": "adv2-ok-rollup-join-group-by-order-user", "kind": "aggregate", "sql": ROLLUP_1, "expect": "allow",
     "rows_sql": ROLLUP_1 + " HAVING count(*) >= 50",
     "note": "per-user rollup over orders joined to consumers, grouped by o.user_id: denied P3 'an inner GROUP BY "
             "does not keep it' although c.user_id = o.user_id is an inner equi-join key (grouping by both ids is allowed)"},
    {"id": "adv2-ok-rollup-join-group-by-order-user-dp", "kind": "aggregate", "sql": ROLLUP_1, "expect": "allow",
     "release": "dp", "note": "the same in dp mode"},
    {"id": "adv2-ok-rollup-join-group-by-consumer-user-city", "kind": "aggregate", "sql": ROLLUP_2, "expect": "allow",
     "rows_sql": ROLLUP_2 + " HAVING count(*) >= 50",
     "note": "average spend per buyer by city (per-user rollup keyed by c.user_id): wrongly denied P3"},
    {"id": "adv2-ok-rollup-join-group-by-consumer-user-city-dp", "kind": "aggregate", "sql": ROLLUP_2,
     "expect": "allow", "release": "dp", "note": "the same in dp mode"},
]

path = Path(__file__).resolve().parent.parent / "tests" / "policy_cases" / "adversary2.json"
path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
print(len(out), "cases ->", path)
