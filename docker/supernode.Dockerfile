# A SuperNode (one device, one logical client): Flower's official image, pinned. With `--isolation process`
# its ClientApp runs in a fedsim SuperExec container (fedsim.Dockerfile), so this image needs no fedsim code.
FROM flwr/supernode:1.42.0

ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0

ENTRYPOINT ["flower-supernode"]
