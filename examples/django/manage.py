#!/usr/bin/env python3
import os
import sys

# The example uses the ssebridge_django package (clients/django). Installed
# (pip install ./clients/django), that copy is used; otherwise the
# repository's own, so that the example runs from a checkout as it is.
try:
    import ssebridge_django  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "django"))

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
