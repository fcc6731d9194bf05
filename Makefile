# latentrt build steps. `make engines` exports a checkpoint to a bundle and builds it for TARGET.
PYTHON ?= python
SRC ?= latentrt/default_model
BUNDLE ?= out/bundle
TARGET ?= ort-cpu
PRECISION ?= fp32

.PHONY: engines test demo lint

engines:
	$(PYTHON) -m latentrt.cli export $(SRC) $(BUNDLE) --precision $(PRECISION) --skip-unchanged
	$(PYTHON) -m latentrt.cli build $(BUNDLE) --target $(TARGET)

test:
	$(PYTHON) -m pytest -q

lint:
	ruff check . && ruff format --check .

demo:
	$(PYTHON) -m latentrt.cli demo -o out/demo.png
