"""intgrads-zmq: Integrated Gradients for transformer classifiers, served over ZeroMQ."""

__version__ = "0.1.0"
