"""PyInstaller hook for OpenVINO (pyinstaller-hooks-contrib has none): the libraries OpenVINO loads
by itself at run time, which no import or ELF dependency shows. clipdesk compiles ONNX graphs for
the CPU, so: the CPU plugin, the AUTO/HETERO/batch plugins that ``Core()`` lists, the ONNX and IR
frontends, and TBB. The GPU and NPU plugins (52 MB, need drivers clipdesk does not use) and the
frontends of other frameworks are left out."""
import os

from PyInstaller.utils.hooks import get_package_paths

_, pkg = get_package_paths("openvino")
libs = os.path.join(pkg, "libs")
KEEP = ("libopenvino_intel_cpu_plugin.so", "libopenvino_auto_plugin.so", "libopenvino_auto_batch_plugin.so",
        "libopenvino_hetero_plugin.so", "libopenvino_onnx_frontend.so", "libopenvino_ir_frontend.so",
        "libtbb.so", "libtbbbind", "libtbbmalloc.so", "libhwloc.so")
binaries = [(os.path.join(libs, f), "openvino/libs") for f in sorted(os.listdir(libs))
            if f.startswith(KEEP) and ".so" in f]
datas = [(os.path.join(libs, f), "openvino/libs") for f in ("plugins.xml",) if os.path.exists(os.path.join(libs, f))]
excludedimports = ["openvino.frontend.jax", "openvino.frontend.pytorch", "openvino.frontend.tensorflow",
                   "openvino.frontend.paddle", "openvino.tools", "openvino.torch"]
