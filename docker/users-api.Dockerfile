# The users service image (see worker.Dockerfile for how the context is made).
FROM scratch
COPY rootfs/ /
ENV USERS_ADDR=0.0.0.0:80
EXPOSE 80
LABEL org.opencontainers.image.title="rideshare-users-api"
ENTRYPOINT ["/users-api"]
