# Everything a new user needs: `make demo` and `make test` bootstrap .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := DJANGO_SETTINGS_MODULE=testproject.demo_settings $(BIN)/python manage.py

.PHONY: install test browser demo serve bench bench-cleanup bench-archive fault-test screenshots lint clean docs dist

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The whole suite on SQLite, then PostgreSQL and MariaDB (skipped with a reason
# when a server is not reachable; with CI=true a missing server is a failure).
test: $(STAMP) browser
	$(BIN)/python scripts/run_tests.py $(ARGS)

# Debian's Chromium for the browser tests, when it is missing and this user can
# install it; otherwise those tests skip and say why (CI installs it in .ci/run).
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
	    || (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1) \
	    || echo "chromium could not be installed: the browser tests will be skipped"; \
	fi

demo: $(STAMP)
	rm -rf var/demo.sqlite3 var/demo-archive
	mkdir -p var/demo-archive
	$(DEMO) migrate --noinput -v 0
	$(DEMO) load_demo_history
	$(DEMO) cleanup_results --dry-run --no-progress
	$(DEMO) cleanup_results --no-progress
	$(DEMO) demo_superuser
	@if [ -z "$(NO_SERVE)" ]; then $(MAKE) --no-print-directory serve; fi

serve: $(STAMP)
	@echo "Serving the admin at http://127.0.0.1:8000/admin/ (Ctrl-C to stop)"
	$(DEMO) runserver 127.0.0.1:8000

# Every benchmark, one after the other (each writes benchmarks/results/); each
# also runs alone, with ARGS passed through: make bench-cleanup ARGS="--quick".
bench: bench-cleanup bench-archive bench-redis bench-dashboard bench-admin

# cleanup_results vs raw DELETE vs stock delete_expired(), with a concurrent writer.
bench-cleanup: $(STAMP)
	$(BIN)/python benchmarks/run.py $(ARGS)

# Snapshot time and dashboard server time on a 2M-row PostgreSQL table (see benchmarks/dashboard_bench.py).
.PHONY: bench-dashboard
bench-dashboard: $(STAMP)
	$(BIN)/python benchmarks/dashboard_bench.py $(ARGS)

# The archive fault tests with more trials than CI's 30 (real processes, PostgreSQL).
FAULT_TRIALS ?= 200
fault-test: $(STAMP)
	FAULT_TRIALS=$(FAULT_TRIALS) TEST_DATABASES=postgresql $(BIN)/python scripts/run_tests.py tests/test_archive_faults.py

# Archive-then-delete and restore vs a hand-written "load, dump, delete" script.
bench-archive: $(STAMP)
	$(BIN)/python benchmarks/archive.py $(ARGS)

# Admin pages that touch TaskResult on 2M rows (PostgreSQL): time and queries per page.
.PHONY: bench-admin
bench-admin: $(STAMP)
	$(BIN)/python benchmarks/admin_changelists.py $(ARGS)

# The Redis enforcer (SCAN) vs a KEYS loop on 1M keys, and the write path's cost
# (benchmarks/redis_run.py; ARGS="--quick" for 100k keys). Uses Redis databases 11-13.
.PHONY: bench-redis
bench-redis: $(STAMP)
	$(BIN)/python benchmarks/redis_run.py $(ARGS)

# The README's admin screenshots, taken by the browser tests (needs Chromium).
screenshots: $(STAMP) browser
	SCREENSHOTS_DIR=docs/screenshots $(BIN)/python -m pytest -q tests/test_browser_admin.py

# The reference site (docs/, mkdocs.yml), built strictly: a broken link or a page
# missing from the nav fails. Output in var/site.
docs: $(STAMP)
	$(BIN)/python -m pip install --quiet "mkdocs>=1.6,<2" "mkdocs-material>=9.5,<10"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# A release you could publish: sdist and wheel, twine's check, and the wheel
# installed into a fresh venv where a minimal project migrates and passes check.
dist: $(STAMP)
	$(BIN)/python -m pip install --quiet "build>=1.2" "twine>=5"
	rm -rf dist
	$(BIN)/python -m build --outdir dist . >/dev/null
	$(BIN)/twine check --strict dist/*
	PYTHON=$(PYTHON) bash scripts/check_wheel.sh

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis dist
