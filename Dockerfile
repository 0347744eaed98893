# The image every Taskbus component of compose.yaml runs (scheduler, executors, console).
FROM python:3.11-slim
WORKDIR /opt/taskbus
COPY pyproject.toml README.md ./
COPY broker broker
COPY executor executor
COPY sdk sdk
COPY console console
RUN pip install --no-cache-dir . && useradd --create-home taskbus
USER taskbus
ENTRYPOINT ["taskbus"]
