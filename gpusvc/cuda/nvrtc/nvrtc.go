//go:build cuda

// Package nvrtc compiles CUDA C to PTX with NVIDIA's runtime compiler,
// loaded at run time with dlopen by whichever soname the host has
// (libnvrtc.so.13, .so.12, .so.11.2, ...): GPU hosts run CUDA 12 or 13
// toolkits while this worker may have been built against 11.8 headers,
// and NVRTC's soname changes with its major version. It needs no GPU, and
// it does not import gorgonia.org/cu (whose init needs one).
package nvrtc

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef int (*create_fn)(void**, const char*, const char*, int, const char* const*, const char* const*);
typedef int (*compile_fn)(void*, int, const char* const*);
typedef int (*size_fn)(void*, size_t*);
typedef int (*get_fn)(void*, char*);
typedef int (*destroy_fn)(void**);
typedef const char* (*errstr_fn)(int);
typedef int (*version_fn)(int*, int*);

static int call_create(void* f, void** p, const char* src, const char* name) {
	return ((create_fn)f)(p, src, name, 0, NULL, NULL);
}
static int call_compile(void* f, void* p, int n, const char* const* opts) { return ((compile_fn)f)(p, n, opts); }
static int call_size(void* f, void* p, size_t* n) { return ((size_fn)f)(p, n); }
static int call_get(void* f, void* p, char* out) { return ((get_fn)f)(p, out); }
static int call_destroy(void* f, void** p) { return ((destroy_fn)f)(p); }
static const char* call_errstr(void* f, int r) { return ((errstr_fn)f)(r); }
static int call_version(void* f, int* maj, int* min) { return ((version_fn)f)(maj, min); }
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"
)

// Sonames are tried in this order; NVRTC_LIBRARY in the environment (a
// path or a name) is tried first by Open's callers that pass it.
var Sonames = []string{
	"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so.11.1", "libnvrtc.so.11.0", "libnvrtc.so",
}

// ErrNotFound: no NVRTC library could be loaded.
var ErrNotFound = errors.New("nvrtc: no libnvrtc found")

// ErrCompile marks a program that did not compile; the log says why.
var ErrCompile = errors.New("nvrtc: compile failed")

// Lib is a loaded NVRTC.
type Lib struct {
	name         string
	major, minor int

	mu                                                           sync.Mutex // NVRTC programs are independent, but keep it simple
	create, compile, ptxSize, ptx, logSize, log, destroy, errstr unsafe.Pointer
}

// Open loads the first NVRTC library found among names (Sonames if none).
func Open(names ...string) (*Lib, error) {
	if len(names) == 0 {
		names = Sonames
	}
	var tried []string
	for _, n := range names {
		cn := C.CString(n)
		h := C.dlopen(cn, C.RTLD_NOW|C.RTLD_LOCAL)
		C.free(unsafe.Pointer(cn))
		if h == nil {
			tried = append(tried, n)
			continue
		}
		l := &Lib{name: n}
		sym := func(s string) unsafe.Pointer {
			cs := C.CString(s)
			defer C.free(unsafe.Pointer(cs))
			return C.dlsym(h, cs)
		}
		l.create, l.compile = sym("nvrtcCreateProgram"), sym("nvrtcCompileProgram")
		l.ptxSize, l.ptx = sym("nvrtcGetPTXSize"), sym("nvrtcGetPTX")
		l.logSize, l.log = sym("nvrtcGetProgramLogSize"), sym("nvrtcGetProgramLog")
		l.destroy, l.errstr = sym("nvrtcDestroyProgram"), sym("nvrtcGetErrorString")
		for _, p := range []unsafe.Pointer{l.create, l.compile, l.ptxSize, l.ptx, l.logSize, l.log, l.destroy, l.errstr} {
			if p == nil {
				return nil, fmt.Errorf("nvrtc: %s lacks a symbol", n)
			}
		}
		if v := sym("nvrtcVersion"); v != nil {
			var maj, min C.int
			if C.call_version(v, &maj, &min) == 0 {
				l.major, l.minor = int(maj), int(min)
			}
		}
		return l, nil
	}
	return nil, fmt.Errorf("%w (tried %s)", ErrNotFound, strings.Join(tried, ", "))
}

// Name says which library was loaded and its version.
func (l *Lib) Name() string {
	if l.major == 0 {
		return l.name
	}
	return fmt.Sprintf("%s (NVRTC %d.%d)", l.name, l.major, l.minor)
}

func (l *Lib) check(r C.int, what string) error {
	if r == 0 {
		return nil
	}
	return fmt.Errorf("nvrtc: %s: %s", what, C.GoString(C.call_errstr(l.errstr, r)))
}

// Compile compiles src to PTX with opts (e.g. "--gpu-architecture=compute_80")
// and returns the PTX and the compiler's log. A program that does not
// compile gives an error matching ErrCompile, and the log.
func (l *Lib) Compile(src, name string, opts ...string) (ptx []byte, log string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	csrc, cname := C.CString(src), C.CString(name)
	defer C.free(unsafe.Pointer(csrc))
	defer C.free(unsafe.Pointer(cname))
	var prog unsafe.Pointer
	if err := l.check(C.call_create(l.create, &prog, csrc, cname), "create program"); err != nil {
		return nil, "", err
	}
	defer C.call_destroy(l.destroy, &prog)

	copts := C.malloc(C.size_t(len(opts)+1) * C.size_t(unsafe.Sizeof(uintptr(0))))
	defer C.free(copts)
	optv := unsafe.Slice((**C.char)(copts), len(opts)+1)
	for i, o := range opts {
		optv[i] = C.CString(o)
		defer C.free(unsafe.Pointer(optv[i]))
	}
	cr := C.call_compile(l.compile, prog, C.int(len(opts)), (**C.char)(copts))

	var n C.size_t
	if C.call_size(l.logSize, prog, &n) == 0 && n > 1 {
		buf := make([]byte, n)
		C.call_get(l.log, prog, (*C.char)(unsafe.Pointer(&buf[0])))
		log = strings.TrimRight(string(buf), "\x00\n")
	}
	if cr != 0 {
		return nil, log, fmt.Errorf("%w: %s", ErrCompile, C.GoString(C.call_errstr(l.errstr, cr)))
	}
	if err := l.check(C.call_size(l.ptxSize, prog, &n), "ptx size"); err != nil {
		return nil, log, err
	}
	buf := make([]byte, n)
	if n > 0 {
		if err := l.check(C.call_get(l.ptx, prog, (*C.char)(unsafe.Pointer(&buf[0]))), "get ptx"); err != nil {
			return nil, log, err
		}
	}
	return []byte(strings.TrimRight(string(buf), "\x00")), log, nil
}
