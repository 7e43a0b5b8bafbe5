# The worker image. Built by scripts/build-images.sh with no registry: the
# build context (target/images/worker/) holds the release binary and every
# shared library `ldd` lists, at their host paths, so FROM scratch suffices.
FROM scratch
COPY rootfs/ /
# The worker's SQLite file; /data and /tmp are the writable directories.
ENV DB_PATH=/data/worker.db
WORKDIR /data
LABEL org.opencontainers.image.title="rideshare-worker"
ENTRYPOINT ["/worker"]
