# The Sluice image: one binary, /usr/local/bin/sluice, that runs any role
# (`docker run IMAGE gateway|processor|router|warehouse|all|migrate ...`).
#
# The build stage installs the Debian packages of scripts/lib/deps.sh (the function the test
# and dev scripts use) and builds with the commands of scripts/test's run_suite, so the image
# holds the binary the test suite tested; tests/docs/check_compose.sh checks that they agree.
# The runtime stage has only the shared libraries the binary links, curl for health checks and
# CA certificates, and runs as the unprivileged user `sluice`.

FROM debian:12 AS build
WORKDIR /src
COPY scripts/lib/deps.sh scripts/lib/deps.sh
RUN . scripts/lib/deps.sh && sluice_install_deps && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_WERROR=ON && cmake --build build -j2

FROM debian:12
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      librdkafka1 libpq5 libmicrohttpd12 libjson-c5 libcurl4 libssl3 zlib1g libavro23 \
      libduktape207 libjemalloc2 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice \
 && mkdir -p /etc/sluice /var/lib/sluice/staging \
 && chown -R sluice:sluice /var/lib/sluice
COPY --from=build /src/build/sluice /usr/local/bin/sluice
USER sluice
WORKDIR /var/lib/sluice
# Roles read SLUICE_* variables (`sluice config --reference`); these are the image's defaults:
# mount your workspaceConfig.json at /etc/sluice/workspaceConfig.json (or set the variable to
# a control plane's URL).
ENV SLUICE_WORKSPACE_CONFIG=/etc/sluice/workspaceConfig.json \
    SLUICE_WAREHOUSE_STAGING_DIR=/var/lib/sluice/staging
# gateway.port, processor.port, router.port, warehouse.port
EXPOSE 8080 8081 8082 8083
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["all"]
