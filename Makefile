# The two commands of the README: `make up` and `make test`.
.PHONY: up down wipe status rollout deploy-rollout test undeploy-wipe build images bench bench-million clean deploy undeploy soak

# `HA=1 make up`: the same stack on the redundant infra (scripts/ha.sh: a
# 3-node RabbitMQ cluster with quorum queues, a 3-server ZooKeeper ensemble;
# docs/topologies.md). `make status` and `make down` follow what `up` started.
up:
	scripts/stack.sh up

down:
	scripts/stack.sh down

status:
	scripts/stack.sh status

# `make down` keeps the data (the next `make up` resumes it); this removes it:
# the workers' volumes and the broker's and ZooKeeper's data.
wipe:
	scripts/stack.sh wipe

# The running stack upgraded to what is built now, one part at a time while
# the others serve: workers, orchestrators, service instances (README
# "Operating it"; no request fails on the redundant topology, HA=1).
rollout:
	scripts/stack.sh rollout

build:
	cargo build --release --workspace --all-targets

images:
	scripts/build-images.sh all

# The whole system in containers (docker/compose.yml): builds every image
# (no registry), starts it, returns once the LB on DEPLOY_PORT answers.
deploy:
	scripts/deploy.sh up

# The running deployment upgraded to the images built now, one container at a
# time while the others serve (README "Operating it").
deploy-rollout:
	scripts/deploy.sh rollout

# Stops it and removes the workers it started and its network; the volumes
# (the data) are kept for the next `make deploy`.
undeploy:
	scripts/deploy.sh down

# As undeploy, then removes the volumes: the data is gone.
undeploy-wipe:
	scripts/deploy.sh wipe

# Installs and starts what the tests need (RabbitMQ, ZooKeeper, nginx, the
# worker image), then runs every test against them.
test:
	scripts/test.sh

# Each figure next to its ceiling, in about 5 minutes; `make bench BENCH_ARGS=--quick`
# for a short run (any flag of `target/release/bench --help`).
bench:
	scripts/bench.sh $(BENCH_ARGS)

# A million users and a million rides through the write path, then every
# route at 16 connections, a new slave's time to serve, the streamed list of
# every user and each process's peak RSS (bench/src/million.rs). Sizes and
# the rest: MILLION_* variables (`target/release/bench million --help`).
bench-million:
	scripts/bench.sh million

# Load through the LB of an isolated redundant stack while a nemesis kills
# broker nodes, ZooKeeper servers, orchestrators, service instances and
# workers; then a checker: 0 lost, 0 applied twice, 0 stale (README "Soak").
# SOAK_MINUTES=N (default 3).
soak:
	scripts/soak.sh

clean:
	scripts/stack.sh wipe || true
	rm -rf var
