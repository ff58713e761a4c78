# make book : install everything into .venv, execute the notebooks, build _build/html
# make test : install everything into .venv, run unit tests, parity tests and nbval
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg

.PHONY: install book test notebooks bench lab clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[book,test,data]"
	$(BIN)/python -c "import matplotlib.pyplot"  # build matplotlib's font cache once, outside nbval
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --all -W -n --keep-going

test: $(STAMP)
	$(BIN)/python -m pytest $(NBVAL) tests notebooks

notebooks: $(STAMP)   # re-execute in place: stores the outputs nbval compares against
	$(BIN)/python scripts/run_notebooks.py notebooks/*.ipynb

bench: $(STAMP)
	$(BIN)/python -m varlib.bench

lab: $(STAMP)
	$(BIN)/python -m pip install --constraint constraints.txt jupyter
	$(BIN)/jupyter lab

clean:
	rm -rf _build $(VENV) *.egg-info
