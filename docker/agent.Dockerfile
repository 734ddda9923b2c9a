# An image of a drover agent, for the `docker` provider (`[[provider]] kind = "docker"`,
# `image = "drover-agent"`) or to run agents by hand. Its entrypoint is `drover`; the
# provider adds `agent --server … --token … --name …`.
#
#   cargo build --release
#   docker build -f docker/agent.Dockerfile -t drover-agent .
#
# Jobs run inside the agent's container, as processes (add a Docker socket mount to the
# provider's `mounts` for docker jobs). Install what your jobs need in a derived image.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 \
    && rm -rf /var/lib/apt/lists/*
COPY target/release/drover /usr/local/bin/drover
ENTRYPOINT ["drover"]
CMD ["agent"]
