# ETS container image. Build: docker build -t ets .
# The build stage installs ETS the way CI does (a non-editable `pip install .`)
# into a virtual environment; the final stage copies only that environment:
# no compilers, no pip cache, no source tree.
# tests/e2e/test_container.py runs this file's RUN, ENTRYPOINT and HEALTHCHECK
# commands outside a container: keep each command on one line.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN python -m venv /opt/ets && /opt/ets/bin/pip install .
# twistd finds `ets` through Twisted's plugin cache; the runtime user cannot
# write it, so it is generated here.
RUN /opt/ets/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin ets
COPY --from=build /opt/ets /opt/ets
ENV PATH=/opt/ets/bin:$PATH PYTHONUNBUFFERED=1 LISTEN_ADDR=:8080 ETS_HEALTH_URL=http://127.0.0.1:8080/health
USER ets
WORKDIR /tmp
EXPOSE 8080
# Set ETS_HEALTH_URL too when LISTEN_ADDR changes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['ETS_HEALTH_URL'], timeout=3)"]
# Exec form: twistd is PID 1 and receives SIGTERM (graceful drain, exit 0).
ENTRYPOINT ["twistd", "-n", "--pidfile=", "ets"]
