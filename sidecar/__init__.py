"""The meshkit sidecar process: config, control plane, data planes (Envoy, Python), admin, drain.

The sidecar starts child processes (Envoy, Python-plane workers) from a process whose gRPC
threads are busy. With grpc's fork support on, grpc's ``pthread_atfork`` handlers run in the
forked child before it execs and can abort it (``ev_epoll1_linux.cc: Check failed``, seen as
Envoy "killed by SIGABRT/SIGSEGV during start-up"). The sidecar never forks without exec, so it
turns fork support off before grpc is first imported (an explicit setting is kept).
"""

import os as _os

_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
