# Set-up and entry points. `make demo` and `make test` are all a fresh machine needs (README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MISTRAL_TOKENIZER := $(VENV)/fixtures/mistral-tokenizer.model.v1

.PHONY: install demo quick-demo test slurm slurm-profile lint bench clean

install: $(STAMP)

# torch first, pinned, so nothing later resolves an unpinned torch (a multi-GB CUDA wheel);
# deepspeed next, built against that torch (--no-build-isolation), then the package itself.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-build-isolation deepspeed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole tiny DAG (config/tiny.yaml, in place of the workflow's default, the paper's) on this machine: the
# shapes world, three training stages, the 13 benchmarks (the judged three by the rule judge), the table and the
# plots under results/tiny/.
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile profiles/local --configfile config/tiny.yaml

# A quick look (about 15 s): build, co-upcycle and check the tiny model, answer a few questions.
quick-demo: $(STAMP)
	$(BIN)/cumo demo --out results/demo

test: $(STAMP) $(MISTRAL_TOKENIZER) slurm
	$(BIN)/python -m pytest

# Mistral-7B's tokenizer for tests/test_mistral_tokenizer.py, out of PyPI's mistral-common wheel (digest checked).
$(MISTRAL_TOKENIZER): tests/mistral/fetch.py | $(STAMP)
	$(BIN)/python tests/mistral/fetch.py $@

# profiles/slurm as the user's Snakemake profile `slurm`, for `snakemake --profile slurm all` (README); the
# account and partition only where given. Run again after profiles/slurm changed.
slurm-profile: | $(STAMP)
	$(BIN)/python profiles/install_slurm.py --account "$(SLURM_ACCOUNT)" --partition "$(SLURM_PARTITION)"

# Debian's Slurm and MUNGE: tests/test_slurm.py starts a real one-node cluster with them.
slurm:
	tests/slurm/install.sh

# The workflow too: formatted as snakefmt writes it, and nothing from `snakemake --lint` on any shipped config
# (tests/test_workflow.py checks the same).
lint: $(STAMP)
	$(BIN)/ruff check cumo tests profiles
	$(BIN)/ruff format --check cumo tests profiles
	$(BIN)/snakefmt --check workflow
	$(BIN)/snakemake --lint
	$(BIN)/snakemake --lint --configfile config/tiny.yaml
	$(BIN)/snakemake --lint --configfile config/released.yaml

bench: $(STAMP)
	$(BIN)/python -m cumo.bench moe

clean:
	rm -rf $(VENV) results/demo results/tiny checkpoints/tiny
