"""The process lifecycle: what the gunicorn master and each worker do around requests.

``gunicorn_conf`` turns the YAML settings into gunicorn's, ``embedded`` runs the private
redis-server, ``tls``/``tlspolicy`` build the HTTPS contexts, ``privileges`` drops root,
``watchdog`` and ``handover`` recycle workers without losing a request.
"""
