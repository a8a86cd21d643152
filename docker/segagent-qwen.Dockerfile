# The SegAgent-Qwen policy server (policy_server/segagent_qwen.py) in its own environment: Qwen-VL-Chat's
# remote code needs transformers 4.32. Fetches the published checkpoint on first start into /models.
FROM python:3.10-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SEGAGENT_QWEN_CACHE=/models

WORKDIR /app
# The lock (scripts/lock_segagent_qwen.sh) pins every package, the transitive ones too: nothing else comes in,
# and pip check fails the build if the pins do not fit together.
COPY requirements-segagent-qwen.lock .
RUN pip install --no-cache-dir --no-deps -r requirements-segagent-qwen.lock \
    && pip check

COPY model/ model/
COPY policy_server/ policy_server/

RUN useradd --create-home --uid 10001 segagent \
    && mkdir -p /models \
    && chown segagent:segagent /models
USER 10001
VOLUME ["/models"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["python", "-m", "policy_server.segagent_qwen", "--host", "0.0.0.0", "--port", "8000"]
