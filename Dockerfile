# One image for web, worker and beat (docker-compose.yml picks the command). The project runs from /app, and
# `pip install .` installs its dependencies as pyproject.toml declares them, pinned by requirements.lock.
# No Docker engine runs in CI: tests/deploy/test_dockerfile.py performs these steps in a temporary folder
# (every COPY, the install, collectstatic, then the CMD serving styled pages), so keep them to
# WORKDIR, ENV, COPY of project paths, RUN and a JSON CMD.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 1000 meterline
COPY pyproject.toml requirements.lock README.md manage.py ./
# Every package of [tool.setuptools.packages.find] in pyproject.toml, no more and no fewer (a test checks).
COPY config ./config
COPY tenants ./tenants
COPY notifications ./notifications
COPY usage ./usage
COPY billing ./billing
COPY spend ./spend
COPY payments ./payments
COPY api ./api
COPY portal ./portal
COPY observability ./observability
RUN pip install -c requirements.lock . && rm -rf build meterline.egg-info
# The LiveKit captures the demo data replays (`manage.py load_demo`).
COPY tests/data/livekit ./tests/data/livekit
# Hashed, compressed static files that WhiteNoise serves (STATIC_ROOT: /app/staticfiles).
RUN DEBUG=0 SECRET_KEY=build-only DATABASE_URL=postgresql://build@localhost/build python manage.py collectstatic --noinput
USER meterline
EXPOSE 8000
# The web server's configuration: config/gunicorn.py (threaded workers that keep answering slow clients).
CMD ["gunicorn", "--config", "python:config.gunicorn", "config.wsgi"]
