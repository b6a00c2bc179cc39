#!/usr/bin/env python3
"""Run the package's tests: python3 runtests.py [test labels] [django test options].

The same as: cd clients/django && python3 -m django test --settings=tests.settings
They start their own redis-server on a free loopback port.
"""

import os
import sys

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    os.chdir(here)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    from django.core.management import execute_from_command_line

    execute_from_command_line([sys.argv[0], "test"] + sys.argv[1:])
