# twisted-chat: `make run` starts the server, `make test` runs every test.
# Both set up .venv first (python3 is all they need).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Extra server options: make run ARGS="--port 7001 --history 50"
ARGS   ?=
# Extra pytest options: make test PYTEST_ARGS="-k pairing"
PYTEST_ARGS ?=

.PHONY: venv run test lint bench bench-quick clean FORCE

venv: $(STAMP)

# The package's files, as the editable install last saw them (see below).
LISTING := build/package-files

# setup.py and the C source: the install builds the C extension, and only a
# new install rebuilds it (a strict editable install links the built .so).
$(STAMP): pyproject.toml setup.py twisted_chat/server/output/_sendmany.c $(LISTING)
	$(PYTHON) scripts/mkvenv.py $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# strict mode: setuptools links every file of the package into
	# build/__editable__.*, a directory on sys.path, so twistd finds the
	# plugin by scanning it (the default mode's import hook hides it).
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=strict
	touch $(STAMP)

# A strict editable install sees edits at once (the links point at the
# files) but not a file added or removed: then this listing changes, and the
# install is redone.
$(LISTING): FORCE
	@mkdir -p build
	@find twisted_chat twisted/plugins -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
		! -name dropin.cache ! -name '*.so' | LC_ALL=C sort > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

FORCE:

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= chat $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check twisted_chat tests bench
	$(BIN)/mypy twisted_chat bench

bench: $(STAMP)
	bash bench/run.sh

bench-quick: $(STAMP)
	bash bench/run.sh --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -f twisted_chat/server/output/*.so
