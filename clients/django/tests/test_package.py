import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from django.core import checks
from django.test import SimpleTestCase, override_settings

import ssebridge_django
from ssebridge_django import publishing

from .redis_server import in_ci

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.dirname(HERE)                      # clients/django
REPO = os.path.dirname(os.path.dirname(PACKAGE))     # the repository


class ScriptTests(SimpleTestCase):
    def test_copy_identical_to_the_repository_script(self):
        # ssebridge embeds store/publish.lua; the package ships a copy. They
        # must be the same bytes (hence the same SHA for EVALSHA).
        with open(os.path.join(REPO, "store", "publish.lua"), "rb") as f:
            repo = f.read()
        with open(os.path.join(PACKAGE, "ssebridge_django", "publish.lua"), "rb") as f:
            shipped = f.read()
        self.assertEqual(shipped, repo, "clients/django/ssebridge_django/publish.lua differs from store/publish.lua: "
                         "cp store/publish.lua clients/django/ssebridge_django/")
        self.assertEqual(publishing.SCRIPT, repo)


class SettingsCheckTests(SimpleTestCase):
    def errors(self):
        return [m.msg for m in checks.run_checks() if m.id == "ssebridge.E001"]

    @override_settings(SSEBRIDGE={})
    def test_defaults_pass(self):
        self.assertEqual(self.errors(), [])

    @override_settings(SSEBRIDGE={"REDIS_ULR": "redis://x", "COOKIE_SAMESITE": "None", "COOKIE_SECURE": False, "SESSION_TTL": 0})
    def test_problems_reported(self):
        errors = self.errors()
        self.assertEqual(len(errors), 3, errors)
        self.assertIn("REDIS_ULR", errors[0])
        self.assertIn("COOKIE_SECURE", errors[1])
        self.assertIn("SESSION_TTL", errors[2])


    @override_settings(SSEBRIDGE={"COOKIE_SAMESITE": "None"})
    def test_samesite_none_with_the_default_secure(self):
        self.assertEqual(self.errors(), [])  # DEBUG is off: Secure
        with self.settings(DEBUG=True):
            self.assertEqual(len(self.errors()), 1)


class InstallTests(SimpleTestCase):
    def test_pip_installs_it_without_an_index(self):
        # As the README says: pip install --no-index --no-build-isolation, into
        # a venv that sees the system's Django and redis-py; from a copy (a
        # build writes into its source tree). The installed package, not this
        # source tree, must be what the venv imports, publish.lua included.
        missing = [m for m in ("pip", "setuptools", "wheel", "venv") if importlib.util.find_spec(m) is None]
        if missing:
            msg = "%s missing: apt-get install -y python3-pip python3-setuptools" % ", ".join(missing)
            if in_ci():
                self.fail(msg)
            raise unittest.SkipTest(msg)
        tmp = tempfile.mkdtemp(prefix="ssebridge-django-pip-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        src, venv = os.path.join(tmp, "src"), os.path.join(tmp, "venv")
        python = os.path.join(venv, "bin", "python")
        shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))

        def run(*args):
            p = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=300,
                               env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")})
            self.assertEqual(p.returncode, 0, "%s:\n%s%s" % (" ".join(args), p.stdout, p.stderr))
            return p.stdout

        run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv)
        run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-index",
            "--no-build-isolation", "--disable-pip-version-check", src)
        out = run(python, "-c", "import ssebridge_django as s, ssebridge_django.templatetags.ssebridge, "
                  "ssebridge_django.management.commands.ssebridge_publish; print(s.__file__, s.SCRIPT_SHA)")
        path, sha = out.split()
        self.assertTrue(path.startswith(os.path.join(venv, "lib")), path)
        self.assertEqual(sha, publishing.SCRIPT_SHA)
        with open(os.path.join(os.path.dirname(path), "publish.lua"), "rb") as f:
            self.assertEqual(f.read(), publishing.SCRIPT)
        with open(os.path.join(os.path.dirname(path), "cluster_publish.lua"), "rb") as f:
            self.assertEqual(f.read(), publishing.CLUSTER_SCRIPT)
        self.assertNotIn("tests", os.listdir(os.path.dirname(os.path.dirname(path))), "the tests are not installed")
        # The distribution says its licence and version, and ships the
        # licence's text (a copy of the repository's LICENSE).
        out = run(python, "-c", "import importlib.metadata as m, ssebridge_django as s; d = m.distribution('django-ssebridge'); "
                  "print(d.version, s.__version__, d.metadata['License']); "
                  "print(*[f.locate() for f in d.files if f.name == 'LICENSE'])")
        first, licence_files = out.splitlines()
        self.assertEqual(first.split(), [ssebridge_django.__version__, ssebridge_django.__version__, "Apache-2.0"])
        self.assertTrue(licence_files, "the installed distribution has no LICENSE")
        with open(licence_files.split()[0], "rb") as f, open(os.path.join(REPO, "LICENSE"), "rb") as repo:
            self.assertEqual(f.read(), repo.read(), "the shipped LICENSE differs from the repository's: cp LICENSE clients/django/")
