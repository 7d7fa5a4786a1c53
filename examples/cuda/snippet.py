# The client of remote-GPU posts, as it runs against a gpumesh host: only
# params= is filled in, and the target is the forwarder of
# `gpumesh up --forward localhost:50051=gpu-host`. (The posts' version
# uses cuda_pb2_grpc without importing it; the import is added.)
import grpc
import cuda_pb2_grpc
from cuda_pb2 import ComputeRequest
channel = grpc.insecure_channel('localhost:50051')
stub = cuda_pb2_grpc.CUDAServiceStub(channel)
response = stub.Compute(ComputeRequest(kernel="matrix_mul", params={"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}))
print([list(row) for row in response.result])
