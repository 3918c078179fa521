# The trial-eligibility CDS Hooks service.
#   docker build -t cds-service .
#   docker run -p 8080:8080 -e CDS_TRUSTED_CLIENTS=/config/trusted-clients.yaml \
#     -e CDS_PUBLIC_BASE_URL=https://cds.example.org -v ./config:/config:ro cds-service
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY cards ./cards
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 cds \
    && mkdir /data && chown cds /data
# The gold patients, for the harness's load step (docker-compose's loader).
COPY tests/gold ./tests/gold

USER cds
ENV CDS_DATA_DIR=/data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# Secure by default: on 0.0.0.0 the service refuses to start without CDS_TRUSTED_CLIENTS.
CMD ["cds-service", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
