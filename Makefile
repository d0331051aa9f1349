# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the local CPU build of 2.13.0 satisfies every later requirement.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/personalize simulate --atlas --spacing 2 --D_w 0.13 --rho 0.025 --T 300 \
		--x 30 --y -10 --z 20 --out demo-out
	@echo "demo written to demo-out/ (density.nii.gz, density.png)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# By hand, for benchmarks/tmcmc_sbibm.py only (never part of `test`): sbibm without its dependencies (they
# would downgrade sbi), and pymc in $(BENCH), a venv layered on $(VENV), since pymc's pytensor caps numba
# below the project's. Run the benchmark with $(BENCH)/bin/python.
BENCH := $(VENV)/bench
bench-deps: $(STAMP)
	$(BIN)/pip install --quiet --no-deps "sbibm==1.1.0" "future==1.0.0" "autograd==1.9.1"
	$(BIN)/python -m venv --without-pip $(BENCH)
	$(BENCH)/bin/python -c "import site, sysconfig; base = '$(abspath $(VENV))/lib/python%d.%d/site-packages' % __import__('sys').version_info[:2]; open(sysconfig.get_paths()['purelib'] + '/_base_venv.pth', 'w').write(f'import site; site.addsitedir({base!r})\n')"
	$(BIN)/pip --python $(BENCH)/bin/python install --quiet "pymc==5.28.5"

clean:
	rm -rf $(VENV) demo-out
