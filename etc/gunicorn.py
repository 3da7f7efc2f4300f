"""gunicorn config: `gunicorn -c etc/gunicorn.py cjs_proxy.wsgi`.

Every value comes from the YAML config (etc/config.yaml, config_<flavor>.yaml with
SETTINGS_FLAVOR, or the file in CJS_PROXY_CONFIG); see cjs_proxy/lifecycle/gunicorn_conf.py.
gunicorn executes this file again on SIGHUP, so a reload re-reads the YAML.

The package and the worker class (`workers.gevent_proxy`) are imported as installed:
`make` installs the checkout into .venv (`pip install -e .`), so nothing here touches
sys.path.
"""

from cjs_proxy.lifecycle.gunicorn_conf import gunicorn_settings

globals().update(gunicorn_settings())
