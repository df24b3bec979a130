"""Entry point of both frozen programs, ``clipdesk-gui`` (the app) and ``clipdesk`` (the CLI).

One Python, one set of libraries: the spec builds two executables from this script and the
program's own file name picks the app or the CLI. A frozen program has no ``python -m``: the app
starts its model host as ``sys.executable -m clipdesk.model_host``, and ``sys.executable`` is this
program, so that command line runs the module here.

The frozen program's loader started it again with ``LD_LIBRARY_PATH`` pointing into the folder
(glibc reads it once, at start: this process keeps finding its libraries). Programs it starts — a
file manager, ``xdg-open``, the model host — get the environment the person started it with, so a
system program never loads the folder's Qt or GLib, and the model host starts as a fresh instance.
"""
import os
import runpy
import sys

if getattr(sys, "frozen", False):
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = original
    for key in [k for k in os.environ if k.startswith("_PYI_")]:
        del os.environ[key]

if sys.argv[1:3] == ["-m", "clipdesk.model_host"]:
    del sys.argv[1:3]
    runpy.run_module("clipdesk.model_host", run_name="__main__", alter_sys=True)
    sys.exit(0)

if os.path.basename(sys.executable) == "clipdesk-gui":
    from clipdesk.ui.app import main
else:
    from clipdesk.cli import main
sys.exit(main())
