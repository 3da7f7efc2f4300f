"""gunicorn worker classes for cjs-proxy."""
