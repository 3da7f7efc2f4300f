"""Administration: the ``cjs-proxy`` command (``cli``) and the active health checker
(``active_health``), which runs beside the proxies, one per cluster; both reach Redis
through ``store`` (never used by the workers)."""
