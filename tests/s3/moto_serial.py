"""moto's S3 server, handling one request at a time.

moto's own `moto_server` serves requests on threads, and its PutObject
checks If-None-Match / If-Match and then writes in two steps, so two
simultaneous conditional PUTs of one key can both succeed (3 of 500 pairs
with moto 5.2.5 here; s3s-fs 0.14.1 does the same, far more often). Served
one at a time, every conditional write is atomic, as on AWS S3: what the
fencing tests need from a real S3 API. HTTP/1.0 (werkzeug's default for a
server without threads): every request closes its connection, so an idle
client connection never blocks the next client.

Usage: python moto_serial.py HOST PORT
"""

import sys

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

try:  # moto >= 5.2.5 keeps S3 metadata headers with underscores through it
    from moto.moto_server.werkzeug_app import MotoRequestHandler
except ImportError:
    MotoRequestHandler = None

host, port = sys.argv[1], int(sys.argv[2])
app = DomainDispatcherApplication(create_backend_app)
options = {"request_handler": MotoRequestHandler} if MotoRequestHandler else {}
run_simple(host, port, app, threaded=False, **options)
