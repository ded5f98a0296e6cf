"""Settings for the whole suite, applied before any test module imports grpc.

Tests start Envoy and sidecar processes from a process running grpc; grpc's fork handlers
can abort such a child between fork and exec (see :mod:`sidecar`), so fork support is off
here too.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
