"""cjs-proxy: a Redis-routed HTTP and WebSocket reverse proxy, compatible with Hipache."""

__version__ = "0.1.0"
