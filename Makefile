# Two commands on a fresh machine: `make run` (the whole lab, headless) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0
# OpenMP's default spin-waiting makes CPU training 2-25x slower on a busy machine
export OMP_WAIT_POLICY ?= PASSIVE

STUDENT := build/student

.PHONY: run test lab lab-solutions teaching-model release gradescope bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

run: $(VENV)/.installed
	$(PY) -m labkit run

# every core (at most 4): a module's tests stay on one worker (tests/conftest.py)
test: $(VENV)/.installed
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadgroup --no-loadscope-reorder

# Students: the student notebooks (exercises stubbed), written on first use and never
# overwritten by `make lab` (work in progress stays; `make release` rewrites them).
lab: $(VENV)/.installed | $(STUDENT)
	$(VENV)/bin/jupyter lab $(STUDENT)/

$(STUDENT): | $(VENV)/.installed
	$(PY) -m labkit release --out $@

# Instructors: the solution notebooks (the source the student version is made from).
lab-solutions: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks/

teaching-model: $(VENV)/.installed
	$(PY) -m labkit teaching-model

# Instructors: (re)write the student notebooks to hand out -> build/student
release: $(VENV)/.installed
	$(PY) -m labkit release --out $(STUDENT)

# Instructors: Gradescope's autograder zip for the class's model ($$LABKIT_MODEL, else gpt2)
gradescope: $(VENV)/.installed
	$(PY) -m grading gradescope --out build/autograder.zip

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs build .pytest_cache
