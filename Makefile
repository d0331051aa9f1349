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

# The main job: the built-in synthetic patient on the default atlas, fitted with TMCMC (all 11 parameters).
# On a 4 mm working grid with a small population, so the demo takes minutes; drop --spacing, --samples and
# --chain-steps for the full settings (docs/fit.md).
demo: $(STAMP)
	$(BIN)/personalize synth --out demo-out/patient
	$(BIN)/personalize fit --t1gd demo-out/patient/t1gd.nii.gz --flair demo-out/patient/flair.nii.gz \
		--pet demo-out/patient/pet.nii.gz --wm demo-out/patient/wm.nii.gz --gm demo-out/patient/gm.nii.gz \
		--csf demo-out/patient/csf.nii.gz --truth demo-out/patient/truth.json \
		--spacing 4 --samples 128 --chain-steps 1 --out demo-out/fit
	@echo "demo written to demo-out/fit/ (summary.json, posterior.nc, *_density.nii.gz, figures/)"

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
