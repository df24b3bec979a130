"""Entry point of both frozen programs, ``clipdesk-gui`` (the app) and ``clipdesk`` (the CLI).

One Python, one set of libraries: the spec builds two executables from this script and the
program's own file name picks the app or the CLI. A frozen program has no ``python -m``: the app
starts its model host as ``sys.executable -m clipdesk.model_host``, and ``sys.executable`` is this
program, so that command line runs the module here.
"""
import os
import runpy
import sys

if sys.argv[1:3] == ["-m", "clipdesk.model_host"]:
    del sys.argv[1:3]
    runpy.run_module("clipdesk.model_host", run_name="__main__", alter_sys=True)
    sys.exit(0)

if os.path.basename(sys.executable) == "clipdesk-gui":
    from clipdesk.ui.app import main
else:
    from clipdesk.cli import main
sys.exit(main())
