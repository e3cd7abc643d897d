# res_scale: build, install, test and run the module and its test pool.
# `make run` starts a local pool; `make test` runs every test. Both provision what they need.

CARGO        ?= cargo
MODULE_DIR   ?= /usr/lib/x86_64-linux-gnu/asterisk/modules
# What `make build` ships; cargo itself writes to CARGO_OUT (CARGO_TARGET_DIR moves it).
RELEASE      := target/release
CARGO_OUT    := $(or $(CARGO_TARGET_DIR),target)/release
TEST_MODULE  := target/test-module/res_scale.so

.PHONY: build gateway install provision test unit-test integration-test run bench mutants clean

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

## test: unit tests, the shipped build (it differs from the tested one in its hot path), then
## integration tests against a real pool
test: provision unit-test build integration-test

unit-test:
	$(CARGO) test --release -p res-scale-core -p scale-gateway

integration-test: $(TEST_MODULE) gateway
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) test --release -p res-scale-tests -- --test-threads=2

## run: a local pool (Consul, RabbitMQ, two Asterisk 22 nodes with res_scale loaded)
run: provision build
	RES_SCALE_MODULE=$(CURDIR)/$(RELEASE)/res_scale.so $(CARGO) run --release -p res-scale-tests --bin scale-pool

## bench: measurements against a real pool (figures go to BENCHMARKS.md): apps, events,
## registrations, then the gateway against the node's own ARI (gateway-bench); `cargo run --release -p res-scale-tests --bin scale-bench -- <name>` runs one
## (uses the test-hooks build: `scale test events` injects events into the real callback path)
bench: provision $(TEST_MODULE) gateway
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) run --release -p res-scale-tests --bin scale-bench
	RES_SCALE_MODULE=$(CURDIR)/$(TEST_MODULE) $(CARGO) run --release -p res-scale-tests --bin gateway-bench

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
