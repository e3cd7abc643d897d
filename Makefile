# res_scale: build, install, test and run the module and its pool.
# `make run` brings up the Dockerized pool; `make test` runs every test. Both provision what they
# need.

CARGO        ?= cargo
MODULE_DIR   ?= /usr/lib/x86_64-linux-gnu/asterisk/modules
# What `make build` ships; cargo itself writes to CARGO_OUT (CARGO_TARGET_DIR moves it).
RELEASE      := target/release
CARGO_OUT    := $(or $(CARGO_TARGET_DIR),target)/release
TEST_MODULE  := target/test-module/res_scale.so
CACHE        := $(or $(RES_SCALE_CACHE),/var/cache/res_scale)

.PHONY: build gateway install provision lint test unit-test integration-test run call stop images \
        provision-demo demo-bin demo-wheels bench scale soak mutants clean

## build: target/release/res_scale.so and target/release/scale-gateway
build: gateway
	$(CARGO) build --release -p res_scale
	mkdir -p $(RELEASE)
	cp $(CARGO_OUT)/libres_scale.so $(RELEASE)/.res_scale.so.tmp
	mv -f $(RELEASE)/.res_scale.so.tmp $(RELEASE)/res_scale.so

## gateway: target/release/scale-gateway (needs no Asterisk headers)
gateway:
	$(CARGO) build --release -p scale-gateway
ifneq ($(CARGO_OUT),$(RELEASE))
	mkdir -p $(RELEASE)
	cp $(CARGO_OUT)/scale-gateway $(RELEASE)/.scale-gateway.tmp
	mv -f $(RELEASE)/.scale-gateway.tmp $(RELEASE)/scale-gateway
endif

## install: copy the module into Asterisk's module folder (temp file + rename: overwriting a
## mapped .so in place crashes a running Asterisk)
install: build
	install -m 0644 $(RELEASE)/res_scale.so $(MODULE_DIR)/.res_scale.so.tmp
	mv -f $(MODULE_DIR)/.res_scale.so.tmp $(MODULE_DIR)/res_scale.so
	@echo "installed $(MODULE_DIR)/res_scale.so; load it with: asterisk -rx 'module load res_scale.so'"

## provision: Asterisk 22 rootfs/image, Consul, RabbitMQ, Kamailio, SIPp, pjsua2 (cached)
provision:
	bash tests/provision.sh

# The module built with the test-only CLI commands (feature test-hooks).
$(TEST_MODULE): FORCE
	$(CARGO) build --release -p res_scale --features test-hooks
	mkdir -p $(dir $(TEST_MODULE))
	cp $(CARGO_OUT)/libres_scale.so $(TEST_MODULE).tmp
	mv -f $(TEST_MODULE).tmp $(TEST_MODULE)
FORCE:

## lint: the code as rustfmt.toml formats it, and clippy without a warning (every target)
lint:
	@command -v rustup >/dev/null && rustup component add rustfmt clippy >/dev/null 2>&1 || true
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --all-targets --workspace -- -D warnings

## test: lint, unit tests, the shipped build (it differs from the tested one in its hot path),
## then integration tests against a real pool
test: provision lint unit-test build integration-test

unit-test:
	$(CARGO) test --release -p res-scale-core -p scale-gateway

integration-test: $(TEST_MODULE) gateway
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) test --release -p res-scale-tests -- --test-threads=2

# The Dockerized pool (configs/docker/): compose project and file. Docker's compose plugin, or
# the standalone docker-compose.
COMPOSE      ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)
DEMO_COMPOSE := $(COMPOSE) -p res-scale-demo -f configs/docker/compose.yaml
# The demo images' base: the Asterisk 22 image that provisioning imports from its debootstrap
# rootfs (no registry needed). RES_SCALE_DEMO_BASE=debian:sid-slim builds from a registry's.
export RES_SCALE_DEMO_BASE ?= res_scale/asterisk:22
DEMO_BIN     := target/demo-bin
DEMO_WHEELS  := target/demo-wheels
# The Python of the conference image (Debian sid's), for which the wheels are chosen.
DEMO_PYTHON  ?= 3.14

## run: the whole pool on this machine, Dockerized (Consul, RabbitMQ, Kamailio, two Asterisk 22
## nodes with res_scale, scale-gateway, the conference app), in the foreground until Ctrl-C,
## which removes it again. It prints where everything is; `make call` calls in.
run: images
	DEMO_COMPOSE="$(DEMO_COMPOSE)" bash configs/docker/run.sh

## call: two SIPp callers (with audio) dial 8000 through Kamailio; prints the node each landed
## on and whether it is in bridge conf; fails if one is not. CALLERS=n for another number.
CALLERS ?= 2
call:
	python3 configs/docker/call.py --callers $(CALLERS)

## stop: removes every container and the network of `make run` (by compose project)
stop:
	$(DEMO_COMPOSE) down --remove-orphans --timeout 5

## images: the demo images (configs/docker/Dockerfile, one stage per role)
images: provision-demo demo-bin demo-wheels
	$(DEMO_COMPOSE) build

# The module and the gateway as the images get them: without debug info (29 MB instead of
# 174 MB sent to the image build of every role).
demo-bin: build
	mkdir -p $(DEMO_BIN)
	strip --strip-debug -o $(DEMO_BIN)/res_scale.so $(RELEASE)/res_scale.so
	strip --strip-debug -o $(DEMO_BIN)/scale-gateway $(RELEASE)/scale-gateway

# Only what the Dockerized pool needs (no host Consul, no pjsua2 venv).
provision-demo:
	bash tests/provision.sh --demo

## demo-wheels: the Python packages of examples/conference, fetched on the host (the image build
## installs them without reaching PyPI itself)
demo-wheels: $(DEMO_WHEELS)/.stamp
$(DEMO_WHEELS)/.stamp: examples/conference/requirements.txt
	rm -rf $(DEMO_WHEELS)
	$(CACHE)/ari-clients-venv/bin/python -m pip download --disable-pip-version-check --no-input -q \
	    --only-binary=:all: --implementation py --abi none --platform any --python-version $(DEMO_PYTHON) \
	    -d $(DEMO_WHEELS) -r $<
	touch $@

## bench: measurements against a real pool (figures go to BENCHMARKS.md): apps, events,
## registrations, then the gateway against the node's own ARI (gateway-bench), then conferences
## across nodes through the gateway (conference-bench), then device state between two nodes against
## res_pjsip_publish_asterisk (state-bench); `cargo run --release -p res-scale-tests --bin scale-bench -- <name>` runs one
## (uses the test-hooks build: `scale test events` injects events into the real callback path)
bench: provision $(TEST_MODULE) gateway
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) run --release -p res-scale-tests --bin scale-bench
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) run --release -p res-scale-tests --bin gateway-bench
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) run --release -p res-scale-tests --bin conference-bench
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) run --release -p res-scale-tests --bin state-bench

## scale: growth measurements (figures go to CAPACITY.md): a pool of 10 nodes (start-up, memory
## at rest, Consul's load, app and registration propagation to every node), then the cost per
## contact as a node holds 1,000 to 100,000, in res_scale's indexed store and in sorcery's
## `memory` side by side (about 20 minutes)
scale: provision $(TEST_MODULE)
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) run --release -p res-scale-tests --bin scale-bench -- pool registrations-growth

## soak: 15 minutes of calls, registration churn, apps added and removed and a broker restart on
## two nodes; RSS and threads of each Asterisk every minute, then what was lost or left, and
## whether memory stayed flat (figures go to BENCHMARKS.md; `make test` runs a 2-minute version)
soak: provision $(TEST_MODULE)
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) run --release -p res-scale-tests --bin soak

## mutants: mutation testing of crates/core with cargo-mutants (slow, hence not in `make test`:
## hours for the whole crate on 2 cores). MUTANTS_FILES scopes it to some files, MUTANTS_ARGS
## adds options, e.g. MUTANTS_ARGS="--shard 0/4" for a quarter. Results in mutants.out/.
MUTANTS_FILES ?=
MUTANTS_ARGS  ?=
mutants:
	$(CARGO) mutants --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-mutants
	$(CARGO) mutants --package res-scale-core $(addprefix --file ,$(MUTANTS_FILES)) $(MUTANTS_ARGS)

clean:
	$(CARGO) clean
