# Yushan: `make run` serves the platform, `make test` runs the whole suite.
# Both do all set-up on a fresh machine: .venv, the package and its dependencies, Java.

PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SCALE   ?= 1
PYTEST_ARGS ?=

.PHONY: run test lint typecheck audit lock bench java browser archive clean migration demo translations screenshots

# The tested environment comes from requirements.lock (every package pinned, with its
# hashes: pip refuses anything else), then the package itself without dependencies;
# `pip check` fails when setup.cfg asks for something the lock lacks (run `make lock`).
$(STAMP): setup.cfg pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --require-hashes -r requirements.lock
	$(PIP) install --quiet --no-deps -e .
	$(PIP) check
	@touch $(STAMP)

# Regenerate requirements.lock from setup.cfg (install_requires and the test extra), with
# hashes; pins move only where setup.cfg's ranges require it (`UPGRADE=1` moves them all).
lock: $(STAMP)
	.venv/bin/pip-compile --quiet --generate-hashes --extra test --strip-extras --allow-unsafe \
	    --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) \
	    --output-file requirements.lock setup.cfg

# Known vulnerabilities in the installed environment (pip-audit); see scripts/audit-deps.sh
# for what fails the build and what only warns.
audit: $(STAMP)
	scripts/audit-deps.sh .venv/bin/pip-audit

java:
	@command -v java >/dev/null 2>&1 || [ -x "$$JAVA_HOME/bin/java" ] || { \
	  echo "installing Java 17 (openjdk-17-jre-headless)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; }

# Debian's Chromium for the real-browser tests (Playwright drives it; no browser download).
browser:
	@dpkg -s chromium fonts-wqy-microhei >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (and a CJK font) for the browser tests"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei; }

# Spark's classes parsed once into a class-data-sharing archive in .venv: every Spark
# driver (web app, executors, tests) then starts seconds sooner. Built once, ~30 s.
archive: $(STAMP) java
	$(PY) -m sandbox.class_archive

run: $(STAMP) java archive
	.venv/bin/yushan init
	.venv/bin/yushan demo --if-missing --scale $(SCALE)
	exec .venv/bin/yushan serve

demo: $(STAMP) java archive
	.venv/bin/yushan demo --scale $(SCALE)

test: $(STAMP) java browser archive
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# ruff (style, bugs, security rules) and mypy (the packages; settings in pyproject.toml).
lint: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/mypy

typecheck: $(STAMP)
	.venv/bin/mypy

bench: $(STAMP) java archive
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

migration: $(STAMP)
	scripts/regen-migration.sh

# Catalogs: every string of web/ (templates and Python) and the policy engine's
# explanation templates (web/i18n.py), merged into the zh-CN catalog, then compiled into
# the .mo that ships in the package (committed; never compiled at start-up).
# tests/test_web_translations.py fails when any of this is out of date.
translations: $(STAMP)
	mkdir -p var && $(PY) -m web.i18n var/messages.pot
	cd web && ../.venv/bin/pybabel update -i ../var/messages.pot -d translations -l zh_Hans_CN \
	       --no-fuzzy-matching --ignore-obsolete -w 100 \
	  && ../.venv/bin/pybabel compile -d translations -l zh_Hans_CN --statistics

# The main journeys at 1280x800 and 390x844 into docs/screenshots/ (real browser, Spark).
screenshots: $(STAMP) java browser archive
	YUSHAN_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/test_browser.py

clean:
	rm -rf .venv var tests/output .pytest_cache
