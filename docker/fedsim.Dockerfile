# The fedsim app: Flower's official SuperExec image plus fedsim. It runs the ServerApp (next to the SuperLink)
# and each ClientApp (next to its SuperNode) with `--isolation process`, as Flower documents for 1.2x+, and the
# compose file's one-shot services (certificates, key registration, run submission).
# Build from the repository root: docker build -f docker/fedsim.Dockerfile -t fedsim-app .
FROM flwr/superexec:1.42.0

USER root
# Places the app user may write, where named volumes mount: the deployment's certificates and keys, results, and
# the warm workers' sockets (each in a private folder the worker makes inside /run/fedsim).
RUN mkdir -p /certs /results /run/fedsim && chown app:app /certs /results /run/fedsim
USER app

WORKDIR /app
COPY --chown=app:app pyproject.toml README.md requirements.lock ./
COPY --chown=app:app fedsim ./fedsim
COPY --chown=app:app strategies ./strategies
COPY --chown=app:app clients ./clients
COPY --chown=app:app scenarios ./scenarios
# Installed once here (editable: `fedsim deploy` submits this source tree as the Flower App), so runs need no
# per-run dependency installation. The exact versions of requirements.lock (the set `make test` passes with);
# torch first from PyTorch's CPU index, as on the development machines (PyPI's build of it carries CUDA).
RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==$(sed -n 's/^torch==//p' requirements.lock)" \
    && python -m pip install --no-cache-dir -c requirements.lock -e .

ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0

ENTRYPOINT ["flower-superexec"]
