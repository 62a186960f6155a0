# Kiln — run `make help` for the targets.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
GO      ?= go
PKGS    := ./...

.PHONY: help build image test e2e lab-deps demo demo-down bench bench-inventory bench-region bench-dhcp bench-http bench-tftp bench-api lint run ci schema fuzz clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## build bin/kiln and the static machine agent bin/kiln-agent
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/kiln ./cmd/kiln
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/kiln-agent ./cmd/kiln-agent

image: ## write the OCI archives dist/kiln.oci.tar (kiln server) and dist/kiln-rack.oci.tar (kiln rack): static kiln, non-root, no shell, no container engine needed
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o dist/kiln ./cmd/kiln
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) $(GO) run ./cmd/kiln-oci --kiln dist/kiln --out dist --tag $(VERSION)

test: ## run the unit and integration tests (embedded etcd, real git, real sockets)
	$(GO) test -count=1 $(PKGS)

e2e: ## run the end-to-end suite (root: network namespaces, QEMU); skipped parts say why
	$(GO) test -count=1 -tags e2e -timeout 60m ./e2e/...

DEMO_DIR ?= /tmp/kiln-demo

lab-deps: ## install what make e2e and make demo need (root, Debian): QEMU, OVMF, iPXE, mmdebstrap, the peers, a kernel package
	bash e2e/deps.sh

demo: lab-deps ## a virtual lab (root, QEMU): kiln server on a git inventory, two rack agents, two VMs behind vBMCs commissioned and deployed with Debian; Ctrl-C tears it down
	@$(MAKE) --no-print-directory demo-down
	@mkdir -p $(DEMO_DIR)
	$(GO) test -c -tags e2e -o $(DEMO_DIR)/e2e.test ./e2e/
	@# The shell ignores Ctrl-C so that demo-down runs after the lab's own teardown.
	@cd e2e && trap '' INT; $(DEMO_DIR)/e2e.test -test.run '^TestDemo$$' -test.v -test.timeout 0 -demo $(DEMO_DIR)/state; \
		status=$$?; cd .. && $(MAKE) --no-print-directory demo-down; exit $$status

demo-down: ## stop the demo lab and remove what it left (processes, network namespaces, /tmp/kiln-demo), even after a kill -9
	@d=$(DEMO_DIR)/state; pid=$$(cat $$d/pid 2>/dev/null); \
	if [ -n "$$pid" ] && kill -0 $$pid 2>/dev/null; then \
		echo "demo-down: stopping the demo (pid $$pid)"; kill -TERM $$pid; \
		for i in $$(seq 120); do kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
		kill -KILL $$pid 2>/dev/null || true; \
	fi; \
	for ns in $$( [ -n "$$pid" ] && ls /run/netns 2>/dev/null | grep "^kl$${pid}x"); do \
		echo "demo-down: removing namespace $$ns"; \
		for p in $$(ip netns pids $$ns 2>/dev/null); do kill -KILL $$p 2>/dev/null || true; done; \
		sleep 0.5; ip netns del $$ns || true; \
	done; \
	rm -rf $(DEMO_DIR)

bench: bench-inventory bench-region bench-api bench-dhcp bench-http bench-tftp ## every benchmark, each beside its peer

bench-inventory: ## apply 10k and 100k machines side by side with a raw etcd loop; edit latency
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./inventory/

lint: ## gofmt, go vet, staticcheck
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || (echo "gofmt: files above need formatting" && exit 1)
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)
	$(GO) tool staticcheck -tags e2e ./e2e/...

run: ## run a server on embedded etcd against examples/lab
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/kiln server --source examples/lab

schema: ## regenerate docs/kiln.schema.json
	$(GO) test ./spec -run TestSchemaUpToDate -update

fuzz: ## fuzz the YAML decoder and the DHCP handler, a minute each
	$(GO) test ./spec -run '^$$' -fuzz FuzzLoad -fuzztime 60s
	$(GO) test ./netboot/dhcp -run '^$$' -fuzz FuzzHandle -fuzztime 60s

ci: lint test e2e ## what CI runs

clean:
	rm -rf bin

bench-region: ## 10,000 machines ready → deployed with instant simulated agents, beside a plain etcd client's status writes
	$(GO) test -run '^$$' -bench BenchmarkRegion -benchtime 1x -timeout 30m ./reconciler/

bench-api: ## the region API: 10,000 summaries listed paged beside the same read from etcd; 100 watchers following 10,000 status changes
	$(GO) test -run '^$$' -bench BenchmarkAPI -benchtime 1x -timeout 30m ./reconciler/api/

bench-dhcp: ## DHCP servers under perfdhcp (root): best DORA rate at ≤2.5% loss, 1,000-client avalanche
	$(GO) test -tags e2e -run '^$$' -bench BenchmarkDHCP -benchtime 1x -timeout 60m ./e2e/

bench-http: ## image transfers: 100 clients download one 64 MB image at once from Kiln's cache handler, then from nginx
	$(GO) test -tags e2e -run '^$$' -bench BenchmarkHTTPImage -benchtime 1x -timeout 30m ./e2e/

bench-tftp: ## TFTP servers (root): 200 concurrent 1 MB fetches, Kiln vs tftpd-hpa (in.tftpd)
	$(GO) test -tags e2e -run '^$$' -bench BenchmarkTFTP -benchtime 1x -timeout 20m ./e2e/
