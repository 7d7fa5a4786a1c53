package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/gpumesh/gpumesh/gpusvc"
	"github.com/gpumesh/gpumesh/internal/human"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/pool"
)

// remoteRef is HOST:[SESSION[/BUFFER]].
type remoteRef struct {
	host    string
	session uint64 // 0: open a new one
	buffer  uint64 // 0: allocate a new one
}

func (r remoteRef) String() string {
	return fmt.Sprintf("%s:%d/%d", r.host, r.session, r.buffer)
}

// parseRemote parses HOST:, HOST:SESSION or HOST:SESSION/BUFFER. ok is
// false for a local path (no colon, or a path with a slash before it).
func parseRemote(s string) (r remoteRef, ok bool, err error) {
	host, rest, found := strings.Cut(s, ":")
	if host == "tag" && found {
		// A pool target, tag:NAME:[SESSION]: the host part holds a colon.
		var name string
		name, rest, found = strings.Cut(rest, ":")
		host = "tag:" + name
	}
	if !found || host == "" || strings.ContainsAny(host, `/\`) || s == "-" {
		return remoteRef{}, false, nil
	}
	r.host = host
	if rest == "" {
		return r, true, nil
	}
	sess, buf, hasBuf := strings.Cut(rest, "/")
	if r.session, err = strconv.ParseUint(sess, 10, 64); err != nil || r.session == 0 {
		return r, true, fmt.Errorf("%q: want HOST:SESSION/BUFFER with numbers from an upload", s)
	}
	if hasBuf {
		if r.buffer, err = strconv.ParseUint(buf, 10, 64); err != nil || r.buffer == 0 {
			return r, true, fmt.Errorf("%q: want HOST:SESSION/BUFFER with numbers from an upload", s)
		}
	}
	return r, true, nil
}

func newCpCmd() *cobra.Command {
	var (
		tf          tailnetFlags
		via         string
		gpu         string
		port        int
		progress    string
		joinTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "cp FILE HOST:[SESSION] | cp HOST:SESSION/BUFFER FILE",
		Short: "Upload a file into a GPU buffer on a host, or download a buffer",
		Long: `cp copies a file into a new resident buffer on HOST's GPU, or a buffer back
into a file ("-" is stdin or stdout). An upload prints where the buffer is,
HOST:SESSION/BUFFER; the session stays open on the host until it has been
idle for its policy's idle_timeout, and only this node can use it: name it
in a later cp, or pass the numbers to your program.

  gpumesh cp weights.bin gpu-host:          # a new session
  gpumesh cp more.bin gpu-host:7            # another buffer in session 7
  gpumesh cp gpu-host:7/1 back.bin          # download
  gpumesh cp weights.bin tag:gpu:           # a new session on a host of the pool

A progress bar with the throughput is drawn on stderr when it is a
terminal; --progress=always or never overrides that.

cp joins the tailnet as this node (the tailnet flags), or goes through a
running gpumesh up's forward with --via localhost:50051.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			src, srcRemote, err := parseRemote(args[0])
			if err != nil {
				return err
			}
			dst, dstRemote, err := parseRemote(args[1])
			if err != nil {
				return err
			}
			switch {
			case srcRemote == dstRemote:
				return errors.New("cp: copy a local file to HOST:[SESSION] or HOST:SESSION/BUFFER to a local file")
			case dstRemote && dst.buffer != 0:
				return errors.New("cp: an upload makes a new buffer: name HOST: or HOST:SESSION")
			case srcRemote && src.buffer == 0:
				return errors.New("cp: name the buffer to download: HOST:SESSION/BUFFER")
			}
			remote := dst
			if srcRemote {
				remote = src
			}
			show, err := showProgress(progress, os.Stderr)
			if err != nil {
				return err
			}
			var bar *progressBar
			if show {
				bar = newProgressBar(os.Stderr, time.Now)
			}
			if pool.IsTarget(remote.host) {
				// The pool picks the host and opens the session there.
				switch {
				case srcRemote || dst.session != 0:
					return errors.New("cp: a session and its buffers live on one host: name it (HOST:SESSION)")
				case via != "":
					return errors.New("cp: --via goes through a forward, which picks the host itself: name any host, or join with a pool target")
				}
				to, closeAll, err := cpPool(ctx, &tf, remote.host, gpu, joinTimeout)
				if err != nil {
					return err
				}
				defer closeAll()
				ref, err := upload(ctx, to, args[0], dst, bar)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), ref)
				return nil
			}
			c, closeNode, err := cpClient(ctx, &tf, via, remote.host, port, joinTimeout)
			if err != nil {
				return err
			}
			defer closeNode()
			defer c.Close()
			if dstRemote {
				ref, err := upload(ctx, hostUpload{c: c, gpu: gpu}, args[0], dst, bar)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), ref)
				return nil
			}
			return download(ctx, c, src, args[1], cmd.OutOrStdout(), bar)
		},
	}
	tf.register(cmd, "gpumesh-client")
	cmd.Flags().StringVar(&via, "via", "", "reach the host through a gpumesh up forward at this local address instead of joining")
	cmd.Flags().StringVar(&gpu, "gpu", "", `the GPU for an upload ("0", a UUID; default: the host's)`)
	cmd.Flags().IntVar(&port, "port", gpusvc.DefaultPort, "the host's compute port")
	cmd.Flags().StringVar(&progress, "progress", "auto", "draw a progress bar: auto (on a terminal), always, never")
	cmd.Flags().DurationVar(&joinTimeout, "join-timeout", node.DefaultJoinTimeout, "give up joining the tailnet after this long")
	return cmd
}

func showProgress(mode string, w *os.File) (bool, error) {
	switch mode {
	case "auto":
		return term.IsTerminal(int(w.Fd())), nil
	case "always":
		return true, nil
	case "never":
		return false, nil
	}
	return false, fmt.Errorf("--progress: want auto, always or never, got %q", mode)
}

// cpClient connects to host's endpoint, through a forward or by joining.
func cpClient(ctx context.Context, tf *tailnetFlags, via, host string, port int, joinTimeout time.Duration) (*gpusvc.Client, func(), error) {
	if via != "" {
		var d net.Dialer
		c, err := gpusvc.NewClient(via, d.DialContext)
		return c, func() {}, err
	}
	cfg, err := tf.config()
	if err != nil {
		return nil, nil, err
	}
	ov, err := node.Join(ctx, node.JoinConfig{Tailnet: &cfg, Timeout: joinTimeout})
	if err != nil {
		return nil, nil, err
	}
	c, err := gpusvc.NewClient(net.JoinHostPort(host, strconv.Itoa(port)), ov.Overlay.Dial)
	if err != nil {
		ov.Close()
		return nil, nil, err
	}
	return c, func() { ov.Close() }, nil
}

// uploadTo is where cp puts a file: one host, through a client for it, or
// the host a pool picks, through the pool.
type uploadTo interface {
	// session returns dst with its session, opening one where it names
	// none (and, for a pool, naming the host picked).
	session(ctx context.Context, dst remoteRef) (remoteRef, error)
	// upload fills a new n-byte buffer in dst's session from r and
	// returns the buffer's ID.
	upload(ctx context.Context, dst remoteRef, n uint64, r io.Reader) (uint64, error)
}

// hostUpload uploads to one host through c.
type hostUpload struct {
	c   *gpusvc.Client
	gpu string
}

func (u hostUpload) session(ctx context.Context, dst remoteRef) (remoteRef, error) {
	if dst.session != 0 {
		return dst, nil
	}
	s, err := u.c.OpenSession(ctx)
	if err != nil {
		return dst, fmt.Errorf("cp: open a session on %s: %w", dst.host, err)
	}
	dst.session = s.ID
	return dst, nil
}

func (u hostUpload) upload(ctx context.Context, dst remoteRef, n uint64, r io.Reader) (uint64, error) {
	return u.c.Upload(ctx, dst.session, u.gpu, n, r)
}

func upload(ctx context.Context, to uploadTo, path string, dst remoteRef, bar *progressBar) (remoteRef, error) {
	var r io.Reader
	var size int64
	if path == "-" {
		// The host needs the size up front: read stdin whole.
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return dst, fmt.Errorf("cp: read stdin: %w", err)
		}
		r, size = bytes.NewReader(b), int64(len(b))
	} else {
		f, err := os.Open(path)
		if err != nil {
			return dst, fmt.Errorf("cp: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return dst, fmt.Errorf("cp: %w", err)
		}
		if !st.Mode().IsRegular() {
			return dst, fmt.Errorf("cp: %s is not a regular file", path)
		}
		r, size = f, st.Size()
	}
	if size == 0 {
		return dst, fmt.Errorf("cp: %s is empty; buffers hold at least one byte", path)
	}
	dst, err := to.session(ctx, dst)
	if err != nil {
		return dst, err
	}
	if bar != nil {
		bar.start("upload", size)
		r = &countingReader{r: r, add: bar.add}
	}
	id, err := to.upload(ctx, dst, uint64(size), r)
	if bar != nil {
		bar.finish(err)
	}
	if err != nil {
		return dst, fmt.Errorf("cp: upload to %s: %w", dst.host, err)
	}
	dst.buffer = id
	return dst, nil
}

func download(ctx context.Context, c *gpusvc.Client, src remoteRef, path string, stdout io.Writer, bar *progressBar) (err error) {
	var w io.Writer = stdout
	if path != "-" {
		// Write beside the target and rename: a failed copy leaves no
		// half file under the name.
		tmp, cerr := os.CreateTemp(dirOf(path), ".gpumesh-cp-*")
		if cerr != nil {
			return fmt.Errorf("cp: %w", cerr)
		}
		defer func() {
			if cerr := tmp.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("cp: %w", cerr)
			}
			if err == nil {
				err = os.Rename(tmp.Name(), path)
			}
			if err != nil {
				os.Remove(tmp.Name())
			}
		}()
		w = tmp
	}
	if bar != nil {
		bar.start("download", -1) // the size is known once the data flows
		w = &countingWriter{w: w, add: bar.add}
	}
	_, err = c.Read(ctx, src.session, src.buffer, 0, 0, w)
	if bar != nil {
		bar.finish(err)
	}
	if err != nil {
		return fmt.Errorf("cp: download %s: %w", src, err)
	}
	return nil
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, os.PathSeparator); i >= 0 {
		return path[:i+1]
	}
	return "."
}

type countingReader struct {
	r   io.Reader
	add func(int)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.add(n)
	return n, err
}

type countingWriter struct {
	w   io.Writer
	add func(int)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.add(n)
	return n, err
}

// progressBar draws "upload [=====>    ] 45% 450.0MiB/1.0GiB 812.3MiB/s"
// on one terminal line, redrawn at most every 100ms.
type progressBar struct {
	w   io.Writer
	now func() time.Time

	mu    sync.Mutex
	what  string    // guarded by mu
	total int64     // -1 when unknown; guarded by mu
	done  int64     // guarded by mu
	t0    time.Time // guarded by mu
	drawn time.Time // guarded by mu
}

func newProgressBar(w io.Writer, now func() time.Time) *progressBar {
	return &progressBar{w: w, now: now}
}

func (b *progressBar) start(what string, total int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.what, b.total, b.done, b.t0 = what, total, 0, b.now()
	b.drawLocked(b.t0)
}

func (b *progressBar) add(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done += int64(n)
	if t := b.now(); t.Sub(b.drawn) >= 100*time.Millisecond {
		b.drawLocked(t)
	}
}

func (b *progressBar) finish(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil && b.total < 0 {
		b.total = b.done
	}
	b.drawLocked(b.now())
	fmt.Fprintln(b.w)
}

func (b *progressBar) drawLocked(t time.Time) {
	b.drawn = t
	fmt.Fprint(b.w, "\r"+renderProgress(b.what, b.done, b.total, t.Sub(b.t0))+"\x1b[K")
}

// renderProgress is one state of the bar; total < 0 means unknown.
func renderProgress(what string, done, total int64, elapsed time.Duration) string {
	const width = 30
	rate := "-"
	if s := elapsed.Seconds(); s > 0 {
		rate = human.Rate(float64(done) / s)
	}
	if total < 0 {
		return fmt.Sprintf("%-8s %s %s", what, human.Bytes(done), rate)
	}
	frac := 1.0
	if total > 0 {
		frac = min(float64(done)/float64(total), 1)
	}
	fill := int(frac * width)
	bar := strings.Repeat("=", fill)
	if fill < width {
		bar += ">" + strings.Repeat(" ", width-fill-1)
	}
	return fmt.Sprintf("%-8s [%s] %3.0f%% %s/%s %s", what, bar, frac*100, human.Bytes(done), human.Bytes(total), rate)
}
