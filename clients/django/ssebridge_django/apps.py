from django.apps import AppConfig
from django.core import checks


class SSEBridgeConfig(AppConfig):
    name = "ssebridge_django"
    verbose_name = "ssebridge"

    def ready(self):
        checks.register(check_settings)


def check_settings(app_configs=None, **kwargs):
    from . import conf

    return [checks.Error(p, id="ssebridge.E001") for p in conf.problems()]
