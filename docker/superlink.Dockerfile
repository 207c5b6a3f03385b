# The SuperLink: Flower's official image, pinned to the flwr version fedsim is tested with. It needs no fedsim
# code: with `--isolation process` the ServerApp runs in the fedsim SuperExec container (fedsim.Dockerfile).
FROM flwr/superlink:1.42.0

# Never `uv sync` an app's dependencies per run (the fedsim image has them; machines may have no network).
ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0

ENTRYPOINT ["flower-superlink"]
