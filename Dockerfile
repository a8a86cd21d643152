# The SegAgent backend for Label Studio. torch from PyPI is a CUDA build: the same image serves
# on a GPU (docker run --gpus all) and on a CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SEGAGENT_DATA_DIR=/data \
    PORT=9090

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
    && SAM2_BUILD_CUDA=0 pip install --no-cache-dir --no-build-isolation sam2==1.1.0

COPY model/ model/
COPY backend/ backend/

RUN useradd --create-home --uid 10001 segagent \
    && mkdir -p /data \
    && chown segagent:segagent /data
USER 10001
VOLUME ["/data"]
EXPOSE 9090

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=4)"]

# One process (interactive sessions and image caches live in it), several threads.
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:${PORT} --workers 1 --threads ${THREADS:-8} --timeout 300 --access-logfile - backend.wsgi:app"]
