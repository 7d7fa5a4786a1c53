package diag

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The local API lets `gpumesh status` and `gpumesh doctor` ask a running
// `gpumesh serve` or `gpumesh up` about its own node: that process holds
// the node's state directory, so another one cannot join as the same node.
// It is HTTP over a Unix socket in the state directory (mode 0700, so only
// the node's user reaches it), answering GET /v1/status and GET /v1/doctor
// with Options in the query and the JSON of Report or []Check, and, on a
// GPU host, GET /v1/qos with its live QoS (see SetQoS).

// SocketName is the local API's socket file in a node's state directory.
const SocketName = "gpumesh.sock"

// SocketPath is the local API's socket for the node whose state is in dir.
func SocketPath(stateDir string) string { return filepath.Join(stateDir, SocketName) }

// ErrNotRunning: no process serves the local API at that path.
var ErrNotRunning = errors.New("diag: no running gpumesh node")

// LocalAPI serves the local API for one node.
type LocalAPI struct {
	path string
	ln   net.Listener
	srv  *http.Server
	wg   sync.WaitGroup

	mu     sync.Mutex
	closed bool           // guarded by mu
	qos    QoSFunc        // guarded by mu; nil: no QoS here
	self   SelfFunc       // guarded by mu; nil: this node serves no GPUs
	links  []registration // made by Register; guarded by mu
}

// ServeLocal listens on the socket at path and answers for node n until
// Close. A socket left by a process that died is replaced; one a live
// process answers on is an error.
func ServeLocal(path string, n Node) (*LocalAPI, error) {
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("diag: another gpumesh process answers on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("diag: remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("diag: local API: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("diag: local API: %w", err)
	}
	a := &LocalAPI{path: path, ln: ln}
	mux := http.NewServeMux()
	mux.Handle("/", handler(n, a.selfFunc))
	mux.HandleFunc("GET /v1/qos", a.serveQoS)
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.srv.Serve(ln)
	}()
	return a, nil
}

// Close stops serving and removes the socket. A second Close returns
// net.ErrClosed.
func (a *LocalAPI) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return net.ErrClosed
	}
	a.closed = true
	a.mu.Unlock()
	a.unregister()
	err := a.srv.Close()
	a.wg.Wait()
	os.Remove(a.path)
	return err
}

// Handler answers the local API's requests about n.
func Handler(n Node) http.Handler { return handler(n, nil) }

// handler is Handler whose status reports this node's own endpoint as
// self returns it, when self is not nil.
func handler(n Node, self func() SelfFunc) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		opts, err := optionsFromQuery(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rep, err := Status(r.Context(), n, opts)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if self != nil {
			if f := self(); f != nil {
				rep.Self.GPU = f(r.Context())
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
	})
	mux.HandleFunc("GET /v1/doctor", func(w http.ResponseWriter, r *http.Request) {
		opts, err := optionsFromQuery(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Doctor(r.Context(), n, opts))
	})
	return mux
}

func (o Options) query() url.Values {
	q := url.Values{}
	for _, h := range o.Hosts {
		q.Add("host", h)
	}
	if o.Port != 0 {
		q.Set("port", strconv.Itoa(o.Port))
	}
	if o.Timeout != 0 {
		q.Set("timeout", o.Timeout.String())
	}
	for k, v := range map[string]string{"kernel": o.Kernel, "gpu": o.GPU, "need_cuda": o.NeedCUDA, "pool": o.Pool} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// optionsFromQuery is strict: an unknown parameter is an error.
func optionsFromQuery(q url.Values) (Options, error) {
	var o Options
	for k, vs := range q {
		v := vs[len(vs)-1]
		var err error
		switch k {
		case "host":
			o.Hosts = vs
		case "port":
			o.Port, err = strconv.Atoi(v)
			if err == nil && (o.Port < 0 || o.Port > 65535) {
				err = errors.New("out of range")
			}
		case "timeout":
			o.Timeout, err = time.ParseDuration(v)
			if err == nil && o.Timeout > time.Minute {
				err = errors.New("over a minute")
			}
		case "kernel":
			o.Kernel = v
		case "gpu":
			o.GPU = v
		case "need_cuda":
			o.NeedCUDA = v
		case "pool":
			o.Pool = v
		default:
			err = errors.New("unknown parameter")
		}
		if err != nil {
			return Options{}, fmt.Errorf("diag: query %s=%q: %w", k, v, err)
		}
	}
	return o, nil
}

// LocalClient asks a running node through its local API.
type LocalClient struct {
	Path string // the socket
}

func (c LocalClient) get(ctx context.Context, what string, q url.Values, v any) error {
	if _, err := os.Stat(c.Path); errors.Is(err, os.ErrNotExist) {
		return ErrNotRunning
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", c.Path)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://gpumesh/v1/"+what+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
			return ErrNotRunning // a socket left behind
		}
		return fmt.Errorf("diag: local API: %w", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("diag: local API: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		return &statusError{code: res.StatusCode, status: res.Status, body: strings.TrimSpace(string(body))}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("diag: local API: %w", err)
	}
	return nil
}

// statusError is the local API's answer other than 200 OK.
type statusError struct {
	code   int
	status string
	body   string
}

func (e *statusError) Error() string { return fmt.Sprintf("diag: local API: %s: %s", e.status, e.body) }

// Status asks the running node for its Status report.
func (c LocalClient) Status(ctx context.Context, opts Options) (Report, error) {
	var r Report
	err := c.get(ctx, "status", opts.query(), &r)
	return r, err
}

// Doctor asks the running node for its Doctor checks.
func (c LocalClient) Doctor(ctx context.Context, opts Options) ([]Check, error) {
	var cs []Check
	err := c.get(ctx, "doctor", opts.query(), &cs)
	return cs, err
}
