//go:build cuda

// These tests need an NVIDIA GPU: gorgonia.org/cu's init exits the test
// binary when cuInit fails. CI only compiles them (go test -c -tags cuda);
// scripts/gpu-check.sh runs the prebuilt binary on a GPU host.
package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/gpusvc/cpu"
	"github.com/gpumesh/gpumesh/gpusvc/kernel"
	"github.com/gpumesh/gpumesh/gpusvc/worker"
)

func newBackend(t testing.TB) *Backend {
	t.Helper()
	b, err := New(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	info := b.Info(context.Background())
	t.Logf("%s; nvrtc %s", info.Status, info.NVRTC)
	return b
}

func randT(r *rand.Rand, shape ...int64) kernel.Tensor {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = r.Float32()*2 - 1
	}
	return kernel.NewFloat32(shape, v)
}

func ten(t kernel.Tensor) kernel.Arg { return kernel.Arg{Kind: kernel.ArgTensor, Tensor: t} }

// close reports whether got matches want within tol·(1+|want|) everywhere.
func closeTo(got, want []float32, tol float64) (float64, bool) {
	worst := 0.0
	if len(got) != len(want) {
		return math.Inf(1), false
	}
	for i := range want {
		d := math.Abs(float64(got[i]-want[i])) / (1 + math.Abs(float64(want[i])))
		worst = max(worst, d)
	}
	return worst, worst <= tol
}

// The built-ins against the CPU backend, on random shapes. Tolerance:
// 1e-5 relative per accumulated term (float32 sums in another order).
func TestBuiltinsMatchCPU(t *testing.T) {
	b := newBackend(t)
	ref := cpu.New()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		m, k, n := 1+r.Int64N(300), 1+r.Int64N(300), 1+r.Int64N(300)
		for _, c := range []struct {
			name string
			args []kernel.Arg
			tol  float64
		}{
			{"matrix_mul", []kernel.Arg{ten(randT(r, m, k)), ten(randT(r, k, n))}, 1e-5 * float64(k)},
			{"saxpy", []kernel.Arg{{Kind: kernel.ArgScalar, Scalar: 1.5}, ten(randT(r, m*k)), ten(randT(r, m*k))}, 1e-6},
			{"reduce_sum", []kernel.Arg{ten(randT(r, m*k*n/7+1))}, 1e-4},
			{"softmax", []kernel.Arg{ten(randT(r, m, k))}, 1e-5},
			{"relu", []kernel.Arg{ten(randT(r, m, n))}, 0},
			{"transpose", []kernel.Arg{ten(randT(r, m, n))}, 0},
		} {
			t.Run(fmt.Sprintf("%s/%d", c.name, i), func(t *testing.T) {
				shape, err := kernel.Check(c.name, c.args)
				if err != nil {
					t.Fatal(err)
				}
				call := gpusvc.Call{Kernel: c.name, Args: c.args, OutShape: shape}
				want, err := ref.Compute(context.Background(), call)
				if err != nil {
					t.Fatal(err)
				}
				got, err := b.Compute(context.Background(), call)
				if err != nil {
					t.Fatal(err)
				}
				if worst, ok := closeTo(got.Float32s(), want.Float32s(), c.tol); !ok {
					t.Errorf("%v: worst relative error %.3g > %.3g", shape, worst, c.tol)
				}
			})
		}
	}
}

func f16(f float32) uint16 { // round to nearest even, normal range and zero only (test data is in [-1, 1])
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int((b>>23)&0xff) - 127 + 15
	mant := b & 0x7fffff
	if exp <= 0 {
		return sign
	}
	h := uint32(exp)<<10 | mant>>13
	rest := mant & 0x1fff
	if rest > 0x1000 || rest == 0x1000 && h&1 == 1 {
		h++
	}
	return sign | uint16(h)
}

func fromF16(h uint16) float32 {
	exp := int(h>>10) & 0x1f
	if exp == 0 {
		return float32(math.Copysign(0, float64(int16(h))))
	}
	v := math.Ldexp(1+float64(h&0x3ff)/1024, exp-15)
	if h&0x8000 != 0 {
		v = -v
	}
	return float32(v)
}

func bf16(f float32) uint16 {
	u := math.Float32bits(f)
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

func fromBF16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// float16 and bfloat16 matmul against float32 on the rounded inputs, with
// the output's own rounding as tolerance.
func TestHalfMatMul(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct {
		dt   kernel.DType
		to   func(float32) uint16
		from func(uint16) float32
		tol  float64
	}{
		{kernel.Float16, f16, fromF16, 2e-3},
		{kernel.BFloat16, bf16, fromBF16, 1.6e-2},
	} {
		t.Run(c.dt.String(), func(t *testing.T) {
			m, k, n := int64(67), int64(129), int64(45)
			conv := func(x kernel.Tensor) (kernel.Tensor, kernel.Tensor) {
				v := x.Float32s()
				h := make([]byte, 2*len(v))
				back := make([]float32, len(v))
				for i, f := range v {
					u := c.to(f)
					h[2*i], h[2*i+1] = byte(u), byte(u>>8)
					back[i] = c.from(u)
				}
				return kernel.Tensor{DType: c.dt, Shape: x.Shape, Data: h}, kernel.NewFloat32(x.Shape, back)
			}
			ah, af := conv(randT(r, m, k))
			bh, bf := conv(randT(r, k, n))
			want, err := cpu.New().Compute(context.Background(), gpusvc.Call{Kernel: "matrix_mul", Args: []kernel.Arg{ten(af), ten(bf)}, OutShape: []int64{m, n}})
			if err != nil {
				t.Fatal(err)
			}
			got, err := b.Compute(context.Background(), gpusvc.Call{Kernel: "matrix_mul", Args: []kernel.Arg{ten(ah), ten(bh)}, OutShape: []int64{m, n}})
			if err != nil {
				t.Fatal(err)
			}
			if got.DType != c.dt {
				t.Fatalf("result is %s", got.DType)
			}
			g := make([]float32, m*n)
			for i := range g {
				g[i] = c.from(uint16(got.Data[2*i]) | uint16(got.Data[2*i+1])<<8)
			}
			if worst, ok := closeTo(g, want.Float32s(), c.tol*math.Sqrt(float64(k))); !ok {
				t.Errorf("worst relative error %.3g", worst)
			}
		})
	}
}

func TestBuffersAndResidentCompute(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	x := kernel.Float32Bytes([]float32{-1, 2, -3, 4})
	h, err := b.Alloc(ctx, 0, 16)
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 16)
	if err := b.ReadAt(ctx, h, 0, zero); err != nil || fmt.Sprint(zero) != fmt.Sprint(make([]byte, 16)) {
		t.Fatalf("new buffer not zeroed: %v %v", zero, err)
	}
	if err := b.WriteAt(ctx, h, 0, x); err != nil {
		t.Fatal(err)
	}
	out, err := b.Alloc(ctx, 0, 16)
	if err != nil {
		t.Fatal(err)
	}
	arg := kernel.Arg{Kind: kernel.ArgBuffer, Buffer: h, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{4}}}
	if _, err := b.Compute(ctx, gpusvc.Call{Kernel: "relu", Args: []kernel.Arg{arg}, Out: out, OutShape: []int64{4}}); err != nil {
		t.Fatal(err)
	}
	res := make([]byte, 16)
	if err := b.ReadAt(ctx, out, 0, res); err != nil {
		t.Fatal(err)
	}
	if got := (kernel.Tensor{Data: res}).Float32s(); fmt.Sprint(got) != "[0 2 0 4]" {
		t.Errorf("relu into a buffer: %v", got)
	}
	if err := b.WriteAt(ctx, h, 8, make([]byte, 16)); !errors.Is(err, kernel.ErrInvalid) {
		t.Errorf("write past the end: %v", err)
	}
	for _, x := range []uint64{h, out} {
		if err := b.Free(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Free(ctx, h); !errors.Is(err, gpusvc.ErrNoBuffer) {
		t.Errorf("second free: %v", err)
	}
	if _, err := b.Alloc(ctx, 0, 1<<62); !errors.Is(err, gpusvc.ErrOutOfMemory) {
		t.Errorf("huge alloc: %v, want ErrOutOfMemory", err)
	}
}

// AddOnePTX adds 1 to n floats; hand-written PTX, for any GPU.
const AddOnePTX = `
.version 6.0
.target sm_50
.address_size 64
.visible .entry add_one(.param .u64 x, .param .u32 n) {
	.reg .pred p;
	.reg .b32 r<5>;
	.reg .f32 f<3>;
	.reg .b64 rd<4>;
	ld.param.u64 rd1, [x];
	ld.param.u32 r1, [n];
	mov.u32 r2, %ctaid.x;
	mov.u32 r3, %ntid.x;
	mov.u32 r4, %tid.x;
	mad.lo.s32 r2, r2, r3, r4;
	setp.ge.u32 p, r2, r1;
	@p bra done;
	cvta.to.global.u64 rd2, rd1;
	mul.wide.u32 rd3, r2, 4;
	add.s64 rd2, rd2, rd3;
	ld.global.f32 f1, [rd2];
	add.f32 f2, f1, 0f3F800000;
	st.global.f32 [rd2], f2;
done:
	ret;
}
`

// FaultPTX stores to address 8: an illegal address.
const FaultPTX = `
.version 6.0
.target sm_50
.address_size 64
.visible .entry fault() {
	.reg .b64 rd<2>;
	.reg .b32 r<2>;
	mov.u64 rd1, 8;
	mov.u32 r1, 1;
	st.global.u32 [rd1], r1;
	ret;
}
`

func launchOn(t *testing.T, b *Backend, mod, fn string, n int, args ...kernel.Arg) error {
	t.Helper()
	return b.Launch(context.Background(), gpusvc.Launch{Module: mod, Function: fn, Grid: [3]uint32{uint32((n + 127) / 128), 1, 1}, Block: [3]uint32{128, 1, 1}, Args: args})
}

func TestPTXAndNVRTCModules(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	const n = 1000
	h, err := b.Alloc(ctx, 0, 4*n)
	if err != nil {
		t.Fatal(err)
	}
	buf := kernel.Arg{Kind: kernel.ArgBuffer, Buffer: h, Tensor: kernel.Tensor{DType: kernel.Float32, Shape: []int64{n}}}
	check := func(want float32) {
		t.Helper()
		p := make([]byte, 4*n)
		if err := b.ReadAt(ctx, h, 0, p); err != nil {
			t.Fatal(err)
		}
		for i, v := range (kernel.Tensor{Data: p}).Float32s() {
			if v != want {
				t.Fatalf("x[%d] = %v, want %v", i, v, want)
			}
		}
	}
	id, _, cached, err := b.LoadModule(ctx, 0, gpusvc.ModuleSource{PTX: []byte(AddOnePTX)})
	if err != nil || cached {
		t.Fatalf("load ptx: %v (cached %v)", err, cached)
	}
	if err := launchOn(t, b, id, "add_one", n, buf, kernel.Arg{Kind: kernel.ArgInt, Int: n}); err != nil {
		t.Fatal(err)
	}
	check(1)
	if id2, _, cached, err := b.LoadModule(ctx, 0, gpusvc.ModuleSource{PTX: []byte(AddOnePTX)}); err != nil || !cached || id2 != id {
		t.Errorf("second load: %v cached %v id %s/%s", err, cached, id2, id)
	}
	if err := launchOn(t, b, id, "no_such_function", n); !errors.Is(err, kernel.ErrInvalid) {
		t.Errorf("unknown function: %v", err)
	}
	if _, log, _, err := b.LoadModule(ctx, 0, gpusvc.ModuleSource{PTX: []byte(".version 6.0\n.target sm_50\nnonsense")}); !errors.Is(err, kernel.ErrInvalid) {
		t.Errorf("bad ptx: %v (log %q)", err, log)
	}

	if b.nvrtc == nil {
		t.Logf("no NVRTC (%s): CUDA C skipped", b.static.NVRTC)
		return
	}
	src := `extern "C" __global__ void scale(float* x, float a, long n) {
		long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
		if (i < n) x[i] *= a;
	}`
	id, log, _, err := b.LoadModule(ctx, 0, gpusvc.ModuleSource{CUDA: src})
	if err != nil {
		t.Fatalf("nvrtc: %v\n%s", err, log)
	}
	if err := launchOn(t, b, id, "scale", n, buf, kernel.Arg{Kind: kernel.ArgScalar, Scalar: 3}, kernel.Arg{Kind: kernel.ArgInt, Int: n}); err != nil {
		t.Fatal(err)
	}
	check(3)
	if _, log, _, err := b.LoadModule(ctx, 0, gpusvc.ModuleSource{CUDA: "__global__ void f( {"}); !errors.Is(err, kernel.ErrInvalid) || log == "" {
		t.Errorf("bad CUDA C: %v, log %q", err, log)
	}
}

// A fault loses the context: that call and every later one get ErrFault
// (the worker then exits and its supervisor starts a fresh one).
func TestFaultLosesTheContext(t *testing.T) {
	b := newBackend(t)
	id, _, _, err := b.LoadModule(context.Background(), 0, gpusvc.ModuleSource{PTX: []byte(FaultPTX)})
	if err != nil {
		t.Fatal(err)
	}
	if err := launchOn(t, b, id, "fault", 1); !errors.Is(err, worker.ErrFault) {
		t.Fatalf("faulting kernel: %v, want ErrFault", err)
	}
	if _, err := b.Alloc(context.Background(), 0, 16); !errors.Is(err, worker.ErrFault) {
		t.Errorf("after the fault: %v, want ErrFault", err)
	}
}

// BenchmarkMatMul reports TFLOP/s of the built-in matmul on resident
// buffers, per dtype (scripts/gpu-check.sh prints it).
func BenchmarkMatMul(b *testing.B) {
	be := newBackend(b)
	ctx := context.Background()
	const n = 4096
	for _, dt := range []kernel.DType{kernel.Float32, kernel.Float16, kernel.BFloat16} {
		b.Run(dt.String(), func(b *testing.B) {
			bytes := int64(n * n * dt.Size())
			var hs [3]uint64
			for i := range hs {
				h, err := be.Alloc(ctx, 0, bytes)
				if err != nil {
					b.Fatal(err)
				}
				defer be.Free(ctx, h)
				hs[i] = h
			}
			arg := func(h uint64) kernel.Arg {
				return kernel.Arg{Kind: kernel.ArgBuffer, Buffer: h, Tensor: kernel.Tensor{DType: dt, Shape: []int64{n, n}}}
			}
			call := gpusvc.Call{Kernel: "matrix_mul", Args: []kernel.Arg{arg(hs[0]), arg(hs[1])}, Out: hs[2], OutShape: []int64{n, n}}
			for b.Loop() {
				if _, err := be.Compute(ctx, call); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(2*n*n*n*float64(b.N)/b.Elapsed().Seconds()/1e12, "TFLOP/s")
		})
	}
}
