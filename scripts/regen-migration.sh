#!/usr/bin/env bash
# Regenerate the initial Alembic revision from yushan/models.py (nothing has shipped yet, so
# the schema is one revision). Later schema changes get their own revisions.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
rm -f yushan/migrations/versions/0001_initial.py
YUSHAN_HOME=$tmp .venv/bin/python - <<'PY'
from alembic import command
from yushan.config import Config
from yushan.db import alembic_config
cfg = alembic_config(Config.from_env())
command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001_initial")
PY
for f in yushan/migrations/versions/0001_initial*.py; do mv "$f" yushan/migrations/versions/0001_initial.py 2>/dev/null || true; done
.venv/bin/ruff format -q yushan/migrations/versions/0001_initial.py || true
rm -rf "$tmp"
echo "regenerated yushan/migrations/versions/0001_initial.py"
