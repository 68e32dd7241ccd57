# syntax=docker/dockerfile:1
# The Sluice app image: Prefect server, deploy step, worker and API all run from it (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_HOME=/app/var/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DATA_DIR=/app/var/data

# the unprivileged user every service runs as (uid/gid 10001: no clash with host users' files)
RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --home-dir /home/sluice --create-home --shell /usr/sbin/nologin sluice

WORKDIR /app

# dependencies first, pinned by the same constraints as `make install`, so code edits reuse this layer
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# the project itself, editable like `make install`: prefect.yaml's pull step runs flows from /app
# (.dockerignore leaves out what only development uses: dev/, tests/, bench/, docs/)
COPY . .
RUN pip install --no-deps -c constraints.txt -e . \
 && mkdir -p /app/var/data /app/var/prefect \
 && chown -R sluice:sluice /app/var \
 && chmod 0755 /app/docker/entrypoint.py /app/docker/healthcheck.py

USER sluice:sluice

ENTRYPOINT ["python", "/app/docker/entrypoint.py"]
CMD ["python", "-m", "api"]
