"""Snippet helper for queue jobs run before Harness.batch existed: ``batch(...)``."""


def batch(cases, modes=("threshold",), kind="aggregate", h=None):
    h = h or globals()["h"]
    return h.batch(cases, modes, kind) if hasattr(h, "batch") else _batch(h, cases, modes, kind)


def _batch(h, cases, modes, kind):
    for name, sql in cases.items():
        for mode in modes:
            r = h.run(sql, mode=mode, kind=kind, truth=False, show=False)
            extra = ""
            if r["decision"] != "deny":
                extra = str(r.get("released", ""))[:160] + " " + str(r.get("exec_error", ""))[:120] + str(r.get("error", ""))[:120]
            print(name, mode, r["decision"], r.get("rules"), extra, flush=True)
