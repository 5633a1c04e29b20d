# The two commands a fresh machine needs (README, "Install and test"). Each installs what it uses first.
PYTHON ?= python3

.PHONY: bench test

bench:  ## install, then verify and time every problem x solution (CPU at small sizes where there is no GPU)
	PYTHON=$(PYTHON) scripts/install.sh .
	kbench bench --all

test:  ## install with the test tools and Ray, lint, then run the whole test suite, slow tests too (GPU tests skip without CUDA)
	PYTHON=$(PYTHON) scripts/install.sh ".[dev,ray]"  # the Ray extra: tests/test_ray_cluster.py runs a local cluster
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -m "slow or not slow"
