// Package python holds the Python client example (compute.py and the
// generated gpumesh_pb2 stubs) and the Go test that runs it through a
// gpumesh forwarder over an embedded tailnet. There is no Go API here.
package python
