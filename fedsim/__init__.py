"""fedsim: federated learning and differential privacy simulation on Flower + Ray."""

__version__ = "0.1.0"
