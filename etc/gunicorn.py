"""gunicorn config: `gunicorn -c etc/gunicorn.py cjs_proxy.wsgi`.

Every value comes from the YAML config (etc/config.yaml, config_<flavor>.yaml with
SETTINGS_FLAVOR, or the file in CJS_PROXY_CONFIG); see cjs_proxy/lifecycle/gunicorn_conf.py.
gunicorn executes this file again on SIGHUP, so a reload re-reads the YAML.
"""

import sys
from pathlib import Path

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "workers").is_dir() and str(_checkout) not in sys.path:
    sys.path.insert(0, str(_checkout))  # the worker class lives in the checkout's workers/

from cjs_proxy.lifecycle.gunicorn_conf import gunicorn_settings

globals().update(gunicorn_settings())
