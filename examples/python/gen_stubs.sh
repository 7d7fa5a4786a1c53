#!/bin/sh
# Regenerates gpumesh_pb2.py and gpumesh_pb2_grpc.py from the service
# definition. Needs Debian's protobuf-compiler (protoc 3.21) and
# protobuf-compiler-grpc (grpc_python_plugin 1.51), which match the
# python3-protobuf and python3-grpcio runtimes:
#
#   apt-get install -y protobuf-compiler protobuf-compiler-grpc
set -eu
here=$(cd "$(dirname "$0")" && pwd)
proto_dir=$here/../../gpusvc/gpumeshpb
plugin=${GRPC_PYTHON_PLUGIN:-$(command -v grpc_python_plugin || true)}
if [ -z "$plugin" ]; then
	echo "gen_stubs.sh: grpc_python_plugin not found (apt-get install protobuf-compiler-grpc)" >&2
	exit 1
fi
protoc -I "$proto_dir" \
	--python_out="$here" \
	--grpc_python_out="$here" \
	--plugin=protoc-gen-grpc_python="$plugin" \
	"$proto_dir/gpumesh.proto"
