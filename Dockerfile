# Maskline: the service only (no tests, no benches). Build: docker build -t maskline .
# Runtime settings come from MASKLINE_* variables (README.md, docs/deploy.md).

# --- build: the wheel, from the source tree ----------------------------------------------------
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY pool pool
COPY sessions sessions
COPY audit audit
COPY relay relay
COPY maskline maskline
COPY migrations migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: the wheel and its dependencies, as a user without privileges ---------------------
FROM python:3.12-slim
RUN useradd --system --create-home --uid 10001 maskline
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER maskline
WORKDIR /home/maskline
ENV MASKLINE_HOST=0.0.0.0 \
    MASKLINE_PORT=8080 \
    MASKLINE_EMBEDDED=never \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# /readyz: Redis and Postgres answer and Redis holds the hot copy (no curl in the slim image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status == 200 else 1)"]
# SIGTERM (docker stop): the workers finish the requests in flight, then exit.
STOPSIGNAL SIGTERM
CMD ["maskline", "serve"]
