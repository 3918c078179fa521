"""gunicorn settings for plain gunicorn, the same that `cds-service serve` uses:

    gunicorn -c python:cds_service.hooks.gunicorn_config --bind 127.0.0.1:8080 \
        --workers 2 --threads 4 'cds_service.hooks.server:worker_app()'

(or GUNICORN_CMD_ARGS="-c python:cds_service.hooks.gunicorn_config"). They give
gunicorn's own errors as OperationOutcome JSON and its logs as JSON lines; see
server.GUNICORN_SETTINGS. Options on the command line override them.
"""

from cds_service.hooks.server import GUNICORN_SETTINGS

globals().update(GUNICORN_SETTINGS)
