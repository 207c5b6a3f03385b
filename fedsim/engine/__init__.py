"""The engine: the round loop (server), workers (Flower ClientApp), cohort training, Flower/Ray glue."""
