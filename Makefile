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

.PHONY: install test demo induction induction-text burstiness-study lr-study stories-run bench stress app study clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	@# On a machine without CUDA take the CPU build of torch, so no multi-GB CUDA wheels are pulled.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install torch; \
	else \
		$(PY) -m pip install torch==2.13.0 || $(PY) -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install -e '.[dev,ray,llc]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -m "not stress"

stress: $(STAMP)
	$(PY) -m pytest tests -m stress

# The demo, live: the app answers within seconds while the nano run trains and its probes follow it
# (app/launch.py); Ctrl-C stops everything, the run marked stopped, and `make demo` again continues it.
demo: $(STAMP)
	$(PY) -m app.launch $(RUNS)/demo --serve $(PORT) --address $(ADDRESS) -- --preset nano --data stories

# The phase change: a 2-layer nano model on the stories with planted repeats (a random span of the
# corpus's frequent tokens repeated at a period drawn from 8..32 per row, in half of each batch's rows).
# Its induction head forms after a plateau; checkpoints are dense (every 25 steps) where it happens.
# See docs/phenomena.md, "The phase change", for the recipe, the measured curve and what it does not show.
INDUCTION_TRAIN := --preset nano --n-layer 2 --data stories --repeat-fraction 0.5 --repeat-period 8:32 \
	--batch-size 32 --lr 1e-3 --warmup 50 --min-lr-ratio 1.0 --steps 1600 --ckpt-every 100 --ckpt-window 400:1200:25
induction: $(STAMP)
	@if [ -f $(RUNS)/induction/run.json ] && grep -q '"status": "complete"' $(RUNS)/induction/run.json; then \
		echo "runs/induction is complete: skipping training"; \
	else \
		$(PY) -m train $(INDUCTION_TRAIN) --out $(RUNS)/induction $$( [ -d $(RUNS)/induction/state ] && echo --resume ); \
	fi
	$(PY) -m probes $(RUNS)/induction

# The phase change on natural text alone (no planted rows): 2-layer nano with a 256-token context on
# bursty stories (every character and object has a made-up name of several tokens, three episodes
# per story, so a context holds one story whose names recur). See docs/phenomena.md, "The phase change on
# natural text" for the prediction, the measured curve and what it does not show.
INDUCTION_TEXT_STEPS ?= 6000
INDUCTION_TEXT_TRAIN := --preset nano --n-layer 2 --n-ctx 256 --data stories --burstiness 1 --story-episodes 3 \
	--corpus-mb 20 --batch-size 16 --lr 1e-3 --warmup 100 --min-lr-ratio 1.0 --steps $(INDUCTION_TEXT_STEPS) --ckpt-every 250 \
	--ckpt-window 1000:4000:100 --keep-states latest
induction-text: $(STAMP)
	@if [ -f $(RUNS)/induction-text/run.json ] && grep -q '"status": "complete"' $(RUNS)/induction-text/run.json; then \
		echo "runs/induction-text is complete: skipping training"; \
	else \
		$(PY) -m train $(INDUCTION_TEXT_TRAIN) --out $(RUNS)/induction-text $$( [ -d $(RUNS)/induction-text/state ] && echo --resume ); \
	fi
	$(PY) -m probes $(RUNS)/induction-text

# Chan et al.'s experiment on this recipe: the same run at other burstiness levels (sibling runs
# runs/bursty-B; the induction probe only), to set beside runs/induction-text (burstiness 1).
BURSTINESS ?= 0.5
BURSTY_STEPS ?= 3000
burstiness-study: $(STAMP)
	@for b in $(BURSTINESS); do \
		if [ -f $(RUNS)/bursty-$$b/run.json ] && grep -q '"status": "complete"' $(RUNS)/bursty-$$b/run.json; then \
			echo "$(RUNS)/bursty-$$b is complete"; \
		else \
			$(PY) -m train $(INDUCTION_TEXT_TRAIN) --burstiness $$b --steps $(BURSTY_STEPS) --out $(RUNS)/bursty-$$b \
				$$( [ -d $(RUNS)/bursty-$$b/state ] && echo --resume ) || exit 1; \
		fi; \
		$(PY) -m probes $(RUNS)/bursty-$$b --only induction || exit 1; \
	done

# The learning-rate study: sibling runs of the demo (same data, seed and schedule shape) at several
# peak learning rates, runs/lr-RATE, all probes. The Compare page says, for each pair, whether their
# generations or their held-out losses part first. See docs/phenomena.md, "The learning-rate study".
LR_STUDY ?= 5e-4 2e-3 8e-3 3.2e-2
lr-study: $(STAMP)
	@for lr in $(LR_STUDY); do \
		if [ -f $(RUNS)/lr-$$lr/run.json ] && grep -q '"status": "complete"' $(RUNS)/lr-$$lr/run.json; then \
			echo "$(RUNS)/lr-$$lr is complete"; \
		else \
			$(PY) -m train --preset nano --data stories --lr $$lr --out $(RUNS)/lr-$$lr \
				$$( [ -d $(RUNS)/lr-$$lr/state ] && echo --resume ) || exit 1; \
		fi; \
		$(PY) -m probes $(RUNS)/lr-$$lr || exit 1; \
	done

# The essay's experiment on real children's stories: GPT-2 Tiny (4 layers, 4 heads, 256 wide, GPT-2's
# BPE) on the first 1,000 stories of DATA, held out against VAL, about 8 passes over its ~0.22 M
# training tokens in 900 steps of 16 x 128 tokens, then every default probe (docs/real-stories.md
# says why these numbers and what the run showed). About an hour on a 2-core CPU, minutes on a GPU.
DATA ?=
VAL ?=
STORIES_DOCS ?= 1000
STORIES_TRAIN := --preset tiny --n-ctx 128 --batch-size 16 --max-docs $(STORIES_DOCS) --steps 900 --warmup 50 \
	--eval-every 50 --ckpt-every 50 --keep-states latest
stories-run: $(STAMP)
	@if [ -z "$(DATA)" ] || [ -z "$(VAL)" ]; then \
		echo "make stories-run needs DATA=PATH VAL=PATH: a text file of stories to train on and another to hold out."; exit 2; fi
	@if [ -f $(RUNS)/stories/run.json ] && grep -q '"status": "complete"' $(RUNS)/stories/run.json; then \
		echo "$(RUNS)/stories is complete: skipping training"; \
	else \
		$(PY) -m train $(STORIES_TRAIN) --data text:$(DATA) --val-data text:$(VAL) --out $(RUNS)/stories \
			$$( [ -f $(RUNS)/stories/run.json ] && echo --resume ) || exit $$?; \
	fi
	$(PY) -m probes $(RUNS)/stories

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
