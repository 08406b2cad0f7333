"""gensearch's services, their chassis and the CLI.

gRPC's C core reads ``GRPC_VERBOSITY`` once, when ``grpc`` is first imported, and without it
logs at INFO through absl on stderr: a channel whose connection the server closed for
idleness printed ``I… chttp2_transport.cc:…] …: Got goaway [2] …`` among the services' JSON
log lines and on ``gensearch up``'s console. Every entry point (``python -m services.<name>``,
``gensearch``) imports this package before ``grpc``, so the default is set here; an operator's
own ``GRPC_VERBOSITY`` (``INFO``, ``DEBUG`` to debug a connection) still wins.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
