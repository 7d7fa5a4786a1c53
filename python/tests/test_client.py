"""Tests of the gpumesh package against a real host, run by python_test.go.

The Go test starts an embedded tailnet with a GPU host (CPU backend), runs
`gpumesh up --forward` for the node "cloud", and forwarders for "narrow"
(allowed matrix_mul only) and "stranger" (allowed nothing), then runs this
module with the installed package, with:

    GPUMESH_TARGET    cloud's forwarder; its rule sets max_request = 256KiB
                      and max_memory = 4MiB
    GPUMESH_NARROW    narrow's forwarder
    GPUMESH_STRANGER  stranger's forwarder
    GPUMESH_KERNELS   the host's built-in kernels, comma-separated
"""

import os
import unittest

import grpc
import numpy as np

import gpumesh
from gpumesh import gpumesh_pb2 as pb

TARGET = os.environ["GPUMESH_TARGET"]
MAX_REQUEST = 256 << 10
MAX_MEMORY = 4 << 20


def rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(dtype)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def read_status(client, session, buffer):
    """The status code of a raw Read of (session, buffer), bypassing the
    client's own bookkeeping: what the host says."""
    try:
        b"".join(r.data for r in client.stub.Read(pb.ReadRequest(session=session, buffer=buffer), timeout=30))
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gm = gpumesh.connect(TARGET, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.gm.close()


class Kernels(Base):
    def test_methods_cover_the_host_builtins(self):
        host = sorted(os.environ["GPUMESH_KERNELS"].split(","))
        self.assertEqual(sorted(gpumesh.KERNELS), host)
        for name, method in gpumesh.KERNELS.items():
            self.assertTrue(callable(getattr(self.gm, method, None)), "no method for %s" % name)

    def test_devices_and_identity(self):
        d = self.gm.devices()
        self.assertEqual(d.host, "gpu-host")
        self.assertEqual(d.backend, "cpu")
        self.assertEqual(d.caller, "cloud")

    def test_explain_gives_the_callers_limits(self):
        ex = self.gm.explain("relu")
        self.assertTrue(ex.allow)
        self.assertEqual(ex.rule, "cloud")
        self.assertEqual(ex.limits.max_request_bytes, MAX_REQUEST)
        self.assertEqual(ex.limits.max_memory, MAX_MEMORY)

    def test_matmul(self):
        a, b = rand((33, 17), 1), rand((17, 9), 2)
        c = self.gm.matmul(a, b)
        self.assertEqual(c.dtype, np.float32)
        self.assertEqual(c.shape, (33, 9))
        np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)

    def test_matmul_of_lists(self):
        c = self.gm.matmul([[1, 2, 3], [4, 5, 6]], [[7, 8], [9, 10], [11, 12]])
        np.testing.assert_array_equal(c, np.array([[58, 64], [139, 154]], np.float32))
        c[0, 0] = 0  # results are the caller's, writable

    def test_saxpy(self):
        x, y = rand(100, 3), rand(100, 4)
        np.testing.assert_allclose(self.gm.saxpy(2.5, x, y), 2.5 * x + y, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(self.gm.saxpy(3, x, y), 3 * x + y, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(self.gm.saxpy(np.float32(-1), x, y), y - x, rtol=1e-6, atol=1e-6)

    def test_reduce_sum(self):
        x = rand((10, 20), 5)
        s = self.gm.reduce_sum(x)
        self.assertEqual(s.shape, (1,))
        self.assertAlmostEqual(float(s[0]), float(x.astype(np.float64).sum()), places=3)

    def test_softmax(self):
        x = rand((7, 13), 6) * 10
        np.testing.assert_allclose(self.gm.softmax(x), softmax(x), rtol=1e-5, atol=1e-6)

    def test_relu(self):
        x = rand((4, 5, 6), 7)
        np.testing.assert_array_equal(self.gm.relu(x), np.maximum(x, 0))

    def test_transpose(self):
        a = rand((11, 3), 8)
        np.testing.assert_array_equal(self.gm.transpose(a), a.T)

    def test_compute_by_name(self):
        x = rand(8, 9)
        np.testing.assert_array_equal(self.gm.compute("relu", x), np.maximum(x, 0))


class DTypes(Base):
    def test_numpy_dtypes_map_to_the_wire(self):
        for dt, wire in [(np.float32, pb.DTYPE_FLOAT32), (np.float16, pb.DTYPE_FLOAT16),
                         (np.int32, pb.DTYPE_INT32), (np.uint8, pb.DTYPE_UINT8),
                         (np.dtype(">f4"), pb.DTYPE_FLOAT32), (np.dtype(">i4"), pb.DTYPE_INT32)]:
            self.assertEqual(gpumesh.wire_dtype(dt), wire, str(dt))

    def test_float16_reaches_the_host_as_float16(self):
        # The CPU host computes float32 only, and says what it was sent.
        with self.assertRaises(gpumesh.Unimplemented) as cm:
            self.gm.matmul(np.ones((2, 2), np.float16), np.ones((2, 2), np.float16))
        self.assertIn("float16", cm.exception.reason)
        self.assertTrue(cm.exception.sent)

    def test_int32_reaches_the_host_as_int32(self):
        with self.assertRaises(gpumesh.Unimplemented) as cm:
            self.gm.transpose(np.ones((2, 3), np.int32))
        self.assertIn("int32", cm.exception.reason)

    def test_dtypes_round_trip_through_buffers(self):
        for arr in [np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
                    np.linspace(-2, 2, 10).astype(np.float16),
                    np.arange(256, dtype=np.uint8),
                    rand((5, 2), 10),
                    np.arange(6, dtype=">f4").reshape(2, 3)]:  # big-endian: sent little-endian
            with self.gm.upload(arr) as buf:
                back = buf.download()
                self.assertEqual(back.dtype, arr.dtype.newbyteorder("="), str(arr.dtype))
                self.assertEqual(back.shape, arr.shape)
                np.testing.assert_array_equal(back, arr)

    def test_float64_is_refused_before_sending(self):
        with self.assertRaises(gpumesh.InvalidArgument) as cm:
            self.gm.relu(np.ones(3))
        self.assertFalse(cm.exception.sent)
        self.assertIn("float64", cm.exception.reason)
        self.assertIn("astype", cm.exception.reason)
        self.assertIsInstance(cm.exception, ValueError)

    def test_shapes_the_host_cannot_take_are_refused_before_sending(self):
        for bad in [np.array(3, np.float32), np.ones((0, 3), np.float32), np.ones((1,) * 9, np.float32)]:
            with self.assertRaises(gpumesh.InvalidArgument) as cm:
                self.gm.relu(bad)
            self.assertFalse(cm.exception.sent, str(bad.shape))


class Buffers(Base):
    def test_upload_download_and_compute_on_the_host(self):
        a, b = rand((16, 8), 11), rand((8, 4), 12)
        with self.gm.session() as s:
            x = s.upload(a)
            self.assertEqual((x.shape, x.dtype, x.nbytes), ((16, 8), np.float32, 16 * 8 * 4))
            np.testing.assert_array_equal(x.download(), a)
            np.testing.assert_array_equal(self.gm.relu(x), np.maximum(a, 0))
            # A resident buffer and an inline array in one call.
            np.testing.assert_allclose(self.gm.matmul(x, b), a @ b, rtol=1e-5, atol=1e-5)
            # The result kept on the host, in a buffer.
            y = s.alloc((16, 4))
            self.assertIs(self.gm.matmul(x, b, out=y), y)
            np.testing.assert_allclose(y.download(), a @ b, rtol=1e-5, atol=1e-5)
            x.write(a * 2)
            np.testing.assert_array_equal(x.download(), a * 2)

    def test_free(self):
        x = self.gm.upload(rand(64, 13))
        self.assertEqual(read_status(self.gm, x.session.id, x.id), grpc.StatusCode.OK)
        x.free()
        self.assertEqual(read_status(self.gm, x.session.id, x.id), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(gpumesh.NotFound) as cm:
            x.download()
        self.assertFalse(cm.exception.sent)
        x.free()  # twice: nothing

    def test_the_context_manager_frees(self):
        with self.gm.upload(rand(64, 14)) as x:
            session, buffer = x.session.id, x.id
            self.assertEqual(read_status(self.gm, session, buffer), grpc.StatusCode.OK)
        self.assertTrue(x.freed)
        self.assertEqual(read_status(self.gm, session, buffer), grpc.StatusCode.NOT_FOUND)

    def test_closing_a_session_frees_its_buffers(self):
        with self.gm.session() as s:
            x, y = s.upload(rand(8, 15)), s.upload(rand(8, 16))
        self.assertTrue(s.closed)
        for b in (x, y):
            self.assertEqual(read_status(self.gm, s.id, b.id), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(gpumesh.NotFound):
            s.upload(rand(8, 17))

    def test_write_chunks_follow_max_request(self):
        self.assertEqual(self.gm.write_chunk_bytes(), MAX_REQUEST)
        a = rand((512, 512), 18)  # 1 MiB: four times max_request, one default chunk
        with self.gm.upload(a) as x:
            np.testing.assert_array_equal(x.download(), a)
        # What a client with the default 1 MiB chunks would have met.
        with self.gm.session() as s:
            def chunks():
                yield pb.WriteRequest(session=s.id, alloc_bytes=a.nbytes, data=a.tobytes())
            with self.assertRaises(grpc.RpcError) as cm:
                self.gm.stub.Write(chunks(), timeout=30)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertIn("max_request", cm.exception.details())

    def test_max_memory(self):
        with self.assertRaises(gpumesh.ResourceExhausted) as cm:
            self.gm.upload(np.zeros(MAX_MEMORY // 4 + 1, np.float32))
        self.assertFalse(cm.exception.sent)
        self.assertEqual(cm.exception.limit, "max_memory")
        # Two uploads that fit alone but not together: the host refuses.
        half = np.zeros(3 << 18, np.float32)  # 3 MiB
        with self.gm.session() as s:
            s.upload(half)
            with self.assertRaises(gpumesh.ResourceExhausted) as cm:
                s.upload(half)
        self.assertTrue(cm.exception.sent)
        self.assertEqual(cm.exception.limit, "max_memory")
        self.assertIn("max_memory = %d bytes" % MAX_MEMORY, cm.exception.reason)
        self.assertIn('rule "cloud"', cm.exception.reason)


class Errors(Base):
    def test_policy_refusal_carries_the_policys_reason(self):
        with gpumesh.connect(os.environ["GPUMESH_NARROW"]) as narrow:
            np.testing.assert_array_equal(narrow.matmul([[1, 2]], [[3], [4]]), [[11]])
            with self.assertRaises(gpumesh.PermissionDenied) as cm:
                narrow.relu([1, -1])
        e = cm.exception
        self.assertEqual(e.code, grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("denied by gpu-host's policy", e.reason)
        self.assertIn("no rule allows narrow to call relu", e.reason)
        self.assertEqual(str(e), e.reason)
        self.assertEqual(e.method, "Compute")

    def test_a_stranger_is_refused(self):
        with gpumesh.connect(os.environ["GPUMESH_STRANGER"]) as stranger:
            with self.assertRaises(gpumesh.PermissionDenied) as cm:
                stranger.matmul([[1]], [[1]])
            self.assertIn("no rule names stranger", cm.exception.reason)
            with self.assertRaises(gpumesh.PermissionDenied) as cm:
                stranger.upload([1, 2, 3])
            self.assertIn("no rule names stranger", cm.exception.reason)

    def test_the_hosts_shape_check(self):
        with self.assertRaises(gpumesh.InvalidArgument) as cm:
            self.gm.matmul(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32))
        self.assertTrue(cm.exception.sent)
        self.assertIn("inner dimensions differ", cm.exception.reason)
        self.assertIsInstance(cm.exception, ValueError)

    def test_a_request_over_max_request_is_not_sent(self):
        big = np.ones((512, 256), np.float32)  # 512 KiB
        with self.assertRaises(gpumesh.ResourceExhausted) as cm:
            self.gm.relu(big)
        e = cm.exception
        self.assertFalse(e.sent)
        self.assertEqual(e.limit, "max_request")
        self.assertIn("max_request of %d bytes" % MAX_REQUEST, e.reason)
        self.assertIn("upload()", e.reason)
        # As the hint says: resident, it goes.
        with self.gm.upload(big) as x:
            np.testing.assert_array_equal(self.gm.relu(x), big)

    def test_an_unreachable_target(self):
        with gpumesh.connect("127.0.0.1:1", timeout=10) as gm:
            with self.assertRaises(gpumesh.Unavailable) as cm:
                gm.devices()
        self.assertIsInstance(cm.exception, ConnectionError)


if __name__ == "__main__":
    unittest.main()
