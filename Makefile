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

.PHONY: venv run test lint bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) scripts/mkvenv.py $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# compat mode: twistd finds plugins by scanning directories on sys.path.
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= chat $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check twisted_chat
	$(BIN)/mypy twisted_chat

bench: $(STAMP)
	bash bench/run.sh

bench-quick: $(STAMP)
	bash bench/run.sh --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
