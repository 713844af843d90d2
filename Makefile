# GPT-2 Workbench. `make test` and `make demo` work from a fresh clone with only Python installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNS ?= runs
PORT ?= 8501
# The app listens on this machine only; ADDRESS=0.0.0.0 serves it on every interface (an explicit opt-in:
# anyone who reaches the port can start probe computations that write into runs).
ADDRESS ?= 127.0.0.1
STREAMLIT := $(VENV)/bin/streamlit run app --server.address $(ADDRESS) --server.port $(PORT) --server.headless true --browser.gatherUsageStats false --client.toolbarMode minimal

.PHONY: install test demo bench stress app study clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	@# On a machine without CUDA take the CPU build of torch, so no multi-GB CUDA wheels are pulled.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install torch; \
	else \
		$(PY) -m pip install torch==2.13.0 || $(PY) -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -m "not stress"

stress: $(STAMP)
	$(PY) -m pytest tests -m stress

demo: $(STAMP)
	@if [ -f $(RUNS)/demo/run.json ] && grep -q '"status": "complete"' $(RUNS)/demo/run.json; then \
		echo "runs/demo is complete: skipping training"; \
	else \
		$(PY) -m train --preset nano --data stories --out $(RUNS)/demo $$( [ -d $(RUNS)/demo/state ] && echo --resume ); \
	fi
	$(PY) -m probes $(RUNS)/demo
	@echo "Starting the app: open http://$(if $(filter 127.0.0.1,$(ADDRESS)),localhost,$(ADDRESS)):$(PORT)"
	$(STREAMLIT)

app: $(STAMP)
	@echo "Starting the app: open http://$(if $(filter 127.0.0.1,$(ADDRESS)),localhost,$(ADDRESS)):$(PORT)"
	$(STREAMLIT)

bench: $(STAMP)
	$(PY) -m bench

# The attention study: the nano demo with each attention kind, same data and seed, as
# sibling runs that the app's "Compare runs" page overlays.
STUDY_KINDS ?= standard linear gated
study: $(STAMP)
	@for kind in $(STUDY_KINDS); do \
		if [ -f $(RUNS)/attn-$$kind/run.json ] && grep -q '"status": "complete"' $(RUNS)/attn-$$kind/run.json; then \
			echo "$(RUNS)/attn-$$kind is complete"; \
		else \
			$(PY) -m train --preset nano --data stories --attention $$kind --out $(RUNS)/attn-$$kind \
				$$( [ -d $(RUNS)/attn-$$kind/state ] && echo --resume ) || exit 1; \
		fi; \
		$(PY) -m probes $(RUNS)/attn-$$kind || exit 1; \
	done

clean:
	rm -rf $(VENV) tests/artifacts
