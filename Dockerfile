# svdserve: one image for the Dask scheduler, the Dask workers and the job API.
# docker-compose.yml chooses the command of each service; the default command
# runs the API. Everything is installed at build time: a container never
# downloads anything when it starts.
#
#   docker build -t svdserve:0.1.0 .
#   docker run --rm -p 8000:8000 svdserve:0.1.0      # API with an embedded LocalCluster

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build stage
# Wheels of svdserve and of every dependency, resolved against the exact pins
# of pyproject.toml. Only this stage talks to the package index.
FROM ${PYTHON_IMAGE} AS build
# The package index, when it is not pip's default: passed through from the
# building machine's environment (`make compose-check` does so when they are
# set there). Build with `--network host` so that pip reaches what the host
# reaches. Nothing of these ends up in the runtime stage.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The context is an allow-list (.dockerignore): pyproject.toml, README.md and
# the four package directories.
COPY . .
# The `dashboard` extra adds bokeh (pinned in pyproject.toml) for the
# scheduler's dashboard on port 8787.
RUN pip wheel --wheel-dir /wheels ".[dashboard]"

# -------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Installed from the wheels of the build stage only (--no-index): no network.
# COPY --from (not RUN --mount) so that the legacy builder, BuildKit and
# `docker-compose build` all build this file, and no `# syntax=` frontend image
# has to be pulled. The cost: the wheels stay in the COPY layer of the image.
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels "svdserve[dashboard]" \
 && rm -rf /wheels \
 && python -c "import svdserve.worker, svdserve.service, svdserve.client, distributed, bokeh"

# A non-root user. The mount points exist in the image and belong to it, so a
# named volume mounted there starts out writable by that user.
RUN groupadd --system --gid 10001 svdserve \
 && useradd --system --uid 10001 --gid svdserve --create-home \
        --home-dir /home/svdserve --shell /usr/sbin/nologin svdserve \
 && mkdir -p /data /results /state \
 && chown svdserve:svdserve /data /results /state

# Defaults of the API (docker-compose.yml sets them explicitly as well).
ENV SVDSERVE_HOST=0.0.0.0 \
    SVDSERVE_PORT=8000 \
    SVDSERVE_DATA_ROOTS=/data \
    SVDSERVE_RESULTS_ROOT=/results \
    SVDSERVE_DATABASE=/state/svdserve.sqlite

WORKDIR /home/svdserve
USER 10001:10001

# 8000 API, 8786 Dask scheduler, 8787 Dask dashboard
EXPOSE 8000 8786 8787

CMD ["svdserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
