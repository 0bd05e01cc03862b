# Two commands do all set-up on a fresh machine:
#   make serve   venv + install + start the server (built-in avatar, CPU model) on http://127.0.0.1:8080
#   make test    venv + install what the tests need (Python extras, Debian packages) + run every test
# Tested on Python 3.11.7 and Debian 12.11 (bookworm), x86_64: the locks in requirements/ were resolved there.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
APT_PKGS := espeak-ng libespeak-ng1 chromium iproute2 festival festvox-kallpc16k festvox-us-slt-hts \
            festvox-kdlpc16k festvox-italp16k festvox-itapc16k festival-czech festvox-czech-dita festvox-czech-krb \
            festvox-czech-machac festvox-czech-ph festvox-suopuhe-lj libflite1 firefox-esr pulseaudio \
            fortune-mod fortunes fortunes-de fortunes-es fortunes-it fortunes-br fortunes-ru fortunes-pl fortunes-cs \
            wamerican wngerman wfrench wspanish witalian wportuguese wpolish wdutch nodejs \
            asterisk-core-sounds-en-g722 asterisk-core-sounds-en janus pulseaudio-utils libportaudio2 coturn
RHUBARB_NPM := rhubarb-lip-sync-wasm@0.1.8
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
# Every Python dependency is installed from a lock (exact versions, sha256 hashes, --no-deps: the
# locks list everything, so mediapipe's and silero-vad's metadata pins -- numpy<2, jax, torch; see
# pyproject.toml -- are never followed), then the project itself without touching them.
# torch==2.13.0+cpu (dev.lock) is not on PyPI: where pip's config does not already find it (a
# find-links folder), run e.g. make test PIP_EXTRA='--extra-index-url https://download.pytorch.org/whl/cpu'
PIP_EXTRA ?=
LOCKED := $(PIP) --require-hashes --no-deps $(PIP_EXTRA)
SELF := $(PIP) --no-deps --no-build-isolation -e .

.PHONY: setup setup-train setup-test setup-model serve test lint bench model clean lock

# Runtime install: pip itself (requirements/bootstrap.lock), the serving dependencies with the
# silero VAD ONNX file and photo-avatar registration (mediapipe's face mesh) (requirements/serve.lock),
# then the package (editable).
setup: $(VENV)/.setup-done
$(VENV)/.setup-done: pyproject.toml requirements/bootstrap.lock requirements/serve.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(LOCKED) -r requirements/bootstrap.lock
	$(LOCKED) -r requirements/serve.lock
	$(SELF)
	touch $@

# Training / evaluation / test dependencies, all in requirements/dev.lock (torch 2.13.0 CPU
# build, onnx, pocketsphinx, pytest, hypothesis, mypy, ruff, ...).
setup-train: $(VENV)/.train-done
$(VENV)/.train-done: $(VENV)/.setup-done requirements/dev.lock
	$(LOCKED) -r requirements/dev.lock
	touch $@

# Refresh the locks from pyproject.toml's ranges (requirements/lock.sh: a throw-away venv, the
# newest versions they allow, hashed). Then run the suite green on them (make clean test) and
# commit requirements/*.lock alone, so a breaking upgrade is one commit to revert.
lock:
	PY=$(PY) requirements/lock.sh

# $(call apt_install,PACKAGES,WHAT TO RUN WHEN THEY ARE MISSING AND apt-get CANNOT INSTALL THEM)
# installs the missing Debian packages when apt-get is there and we are root; "$$missing" names them.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else $(2); fi; \
	fi
endef

# Everything the test-suite needs: the Python locks (setup-train) + Debian packages (when apt is available).
setup-test: $(VENV)/.test-done
$(VENV)/.test-done: $(VENV)/.train-done
	$(call apt_install,$(APT_PKGS),echo "WARNING: missing Debian packages (tests needing them will skip):$$missing")
	@# Rhubarb Lip Sync (WebAssembly port) for the offline-reference comparison (bench/rhubarb_reference.py)
	@# (Debian's nodejs comes without npm; NodeSource's includes it, and conflicts with Debian's npm)
	@if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null || true; fi
	@if command -v npm >/dev/null 2>&1; then \
	  test -f bench/.rhubarb/node_modules/rhubarb-lip-sync-wasm/dist/index.js || \
	  npm install --prefix bench/.rhubarb --no-audit --no-fund $(RHUBARB_NPM) >/dev/null 2>&1 || \
	  echo "WARNING: npm install $(RHUBARB_NPM) failed (its test will skip)"; \
	else echo "WARNING: npm missing: the Rhubarb comparison test will skip"; fi
	touch $@

serve: setup
	@echo "Avatar server: open http://$(HOST):$(PORT)/ in Chromium or Firefox"
	$(BIN)/avatar serve --host $(HOST) --port $(PORT)

# The suite runs inside a private network namespace (loopback + a veth pair on 198.18.0.0/15):
# Chromium and aiortc find no ICE candidates over loopback alone, and nothing leaves the machine.
test: setup-test
	tests/netns_run.sh $(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

lint: setup-test
	$(BIN)/ruff check server engines tests bench
	$(BIN)/mypy

bench: setup-test
	$(BIN)/python bench/latency.py

# Retrain the viseme model from scratch, one command: the corpora (deterministic from their seeds;
# an interrupted run resumes), MODEL_MINUTES of training on one CPU thread (or a CUDA GPU), ONNX
# export with parity checks, evaluation into $(MODEL_RUN)/eval. Ship it with
#   cp $(MODEL_RUN)/visemes.onnx engines/weights/visemes.onnx
MODEL_RUN ?= runs/model
MODEL_MINUTES ?= 40
MODEL_ARGS ?= --lookahead-ms 40 --seed 0 --channels 160 --hidden 224
GEN := $(BIN)/python -m engines.corpus.generate --minutes 240 --jobs 2
# Debian packages only `make model` needs: festvox-ru ships the recorded Russian speech of
# corpus11/12 (a 178 MB download, so the test set-up does not fetch it). The Asterisk prompts of
# corpus14/15 (asterisk-core-sounds-en-g722, 10 MB) come with the test set-up's APT_PKGS.
MODEL_APT_PKGS := festvox-ru
setup-model: setup-test
	$(call apt_install,$(MODEL_APT_PKGS),echo "ERROR: make model needs the Debian packages:$$missing"; exit 1)

model: setup-model
	$(BIN)/python -m engines.corpus.generate --out data/corpus3/val --minutes 30 --seed 12 --jobs 2 --val
	$(BIN)/python -m engines.corpus.generate --out data/flite_val/val --minutes 16 --seed 99 --jobs 2 --festival-fraction 0 --flite-fraction 1
	$(GEN) --out data/corpus2/train --seed 11 --festival-fraction 0.15 --aug p_pitch=0.2
	$(GEN) --out data/corpus4/train --seed 31
	$(GEN) --out data/corpus5/train --seed 41
	$(GEN) --out data/corpus6/train --seed 51
	$(GEN) --out data/corpus11/train --seed 111 --festival-fraction 0 --recorded-fraction 0.7
	$(GEN) --out data/corpus12/train --seed 121 --festival-fraction 0 --recorded-fraction 0.7
	$(BIN)/python -m engines.corpus.transcribed --source en-allison
	$(GEN) --out data/corpus14/train --seed 141 --festival-fraction 0 --recorded-fraction 2.5 --recorded-dbs en-allison
	$(GEN) --out data/corpus15/train --seed 151 --festival-fraction 0 --recorded-fraction 2.5 --recorded-dbs en-allison
	$(BIN)/python -m engines.train --corpus data/corpus2 data/corpus4 data/corpus5 data/corpus6 data/corpus11 data/corpus12 \
	  data/corpus14 data/corpus15 \
	  --val data/flite_val/val --out $(MODEL_RUN) --minutes $(MODEL_MINUTES) $(MODEL_ARGS)
	$(BIN)/python -m engines.evaluate --model $(MODEL_RUN)/visemes.onnx --corpus data/corpus3 --out $(MODEL_RUN)/eval

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
