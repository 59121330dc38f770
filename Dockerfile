# One image for web, worker and beat (docker-compose.yml picks the command).
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml requirements.lock README.md ./
COPY config ./config
COPY tenants ./tenants
COPY usage ./usage
COPY billing ./billing
COPY templates ./templates
COPY manage.py ./
RUN pip install -c requirements.lock . && useradd --system --uid 1000 meterline
COPY tests/data/livekit ./tests/data/livekit
RUN DEBUG=0 SECRET_KEY=build-only DATABASE_URL=postgresql://build@localhost/build python manage.py collectstatic --noinput
USER meterline
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--workers", "4", "--access-logfile", "-"]
