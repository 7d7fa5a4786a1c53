#!/bin/sh
# Regenerates the committed Python stubs (make python-stubs):
#
#   gpusvc/gpumeshpb/gpumesh.proto -> examples/python/gpumesh_pb2{,_grpc}.py
#                                  -> python/gpumesh/gpumesh_pb2{,_grpc}.py
#   examples/cuda/cuda.proto       -> examples/cuda/cuda_pb2{,_grpc}.py
#
# Needs Debian's protobuf-compiler (protoc 3.21), protobuf-compiler-grpc
# (grpc_python_plugin 1.51), which match the python3-protobuf and
# python3-grpcio runtimes, and libprotobuf-dev (google/protobuf/struct.proto):
#
#   apt-get install -y protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
#
# `python3 -m grpc_tools.protoc` works instead where grpcio-tools is
# installed (GRPC_TOOLS=1).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "${GRPC_TOOLS:-0}" = 1 ]; then
	protoc() { python3 -m grpc_tools.protoc "$@"; }
	plugin_flag=
else
	plugin=${GRPC_PYTHON_PLUGIN:-$(command -v grpc_python_plugin || command -v protoc-gen-grpc-python || true)}
	if [ -z "$plugin" ]; then
		echo "gen-python-stubs.sh: grpc_python_plugin not found (apt-get install protobuf-compiler-grpc)" >&2
		exit 1
	fi
	plugin_flag=--plugin=protoc-gen-grpc_python=$plugin
fi
wkt=${PROTOBUF_INCLUDE:-/usr/include}
if [ "${GRPC_TOOLS:-0}" != 1 ] && [ ! -f "$wkt/google/protobuf/struct.proto" ]; then
	echo "gen-python-stubs.sh: $wkt/google/protobuf/struct.proto not found (apt-get install libprotobuf-dev, or set PROTOBUF_INCLUDE)" >&2
	exit 1
fi

gen() { # gen PROTO_DIR PROTO OUT_DIR
	protoc -I "$1" -I "$wkt" --python_out="$3" --grpc_python_out="$3" $plugin_flag "$1/$2"
}

gen gpusvc/gpumeshpb gpumesh.proto examples/python
gen gpusvc/gpumeshpb gpumesh.proto python/gpumesh
# Inside the package the stubs import each other relatively. The proto's
# file name stays gpumesh.proto, as the Go server registers it.
sed -i 's/^import gpumesh_pb2 as /from . import gpumesh_pb2 as /' python/gpumesh/gpumesh_pb2_grpc.py

gen examples/cuda cuda.proto examples/cuda
cat >>examples/cuda/cuda_pb2.py <<'PY'

# --- Added by gpumesh's scripts/gen-python-stubs.sh (make python-stubs). ---
# Recent protobuf runtimes take a dict for a google.protobuf.Struct field, so
#   ComputeRequest(kernel="matrix_mul", params={"a": [[1, 2], [3, 4]], ...})
# works as it is. Older ones (Debian 12's python3-protobuf 4.21) refuse it;
# there, ComputeRequest's constructor fills params from a dict with
# Struct.update. Nothing else changes.
def _gpumesh_params_from_dict():
  try:
    ComputeRequest(params={"a": [1]})
    return  # the runtime does it itself
  except (TypeError, ValueError):
    pass
  init = ComputeRequest.__init__

  def __init__(self, *args, params=None, **kwargs):
    if isinstance(params, dict):
      init(self, *args, **kwargs)
      self.params.update(params)
    else:
      init(self, *args, params=params, **kwargs)

  ComputeRequest.__init__ = __init__


_gpumesh_params_from_dict()
del _gpumesh_params_from_dict
PY
echo "gen-python-stubs.sh: regenerated the stubs of gpumesh.proto and cuda.proto"
