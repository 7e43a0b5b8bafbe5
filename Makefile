# The two commands of the README: `make up` and `make test`.
.PHONY: up down status test build images bench clean deploy undeploy

# `HA=1 make up`: the same stack on the redundant infra (scripts/ha.sh: a
# 3-node RabbitMQ cluster with quorum queues, a 3-server ZooKeeper ensemble;
# docs/topologies.md). `make status` and `make down` follow what `up` started.
up:
	scripts/stack.sh up

down:
	scripts/stack.sh down

status:
	scripts/stack.sh status

build:
	cargo build --release --workspace --all-targets

images:
	scripts/build-images.sh all

# The whole system in containers (docker/compose.yml): builds every image
# (no registry), starts it, returns once the LB on DEPLOY_PORT answers.
deploy:
	scripts/deploy.sh up

# Stops it and removes the workers it started, its network and volumes.
undeploy:
	scripts/deploy.sh down

# Installs and starts what the tests need (RabbitMQ, ZooKeeper, nginx, the
# worker image), then runs every test against them.
test:
	scripts/test.sh

bench:
	scripts/bench.sh

clean:
	scripts/stack.sh down || true
	rm -rf var
