# The rides service image (see worker.Dockerfile for how the context is made).
# The area list is compiled into the binary, so nothing else is shipped.
FROM scratch
COPY rootfs/ /
ENV RIDES_ADDR=0.0.0.0:80
EXPOSE 80
LABEL org.opencontainers.image.title="rideshare-rides-api"
ENTRYPOINT ["/rides-api"]
