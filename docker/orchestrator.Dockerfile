# The orchestrator image (see worker.Dockerfile for how the context is made).
# It needs the engine socket mounted to start worker containers:
#   -v /var/run/docker.sock:/var/run/docker.sock
FROM scratch
COPY rootfs/ /
ENV ORCH_ADDR=0.0.0.0:80 \
    WORKER_RUNTIME=docker \
    WORKER_IMAGE=rideshare-worker:latest
WORKDIR /data
EXPOSE 80
LABEL org.opencontainers.image.title="rideshare-orchestrator"
ENTRYPOINT ["/orchestrator"]
