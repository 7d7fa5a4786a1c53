//go:build !linux

package wanlab

import (
	"context"
	"errors"
)

var errNotLinux = errors.New("wanlab: the lab needs Linux (network namespaces, TUN)")

// Do fails: namespaces need Linux.
func (ns Namespace) Do(f func() error) error { return errNotLinux }

// Lab is a running impaired-link lab (Linux only).
type Lab struct{ A, B, R Namespace }

// Start fails: the lab needs Linux.
func Start(ctx context.Context, cfg Config) (*Lab, error) { return nil, errNotLinux }

func (l *Lab) Set(aToB, bToA Impairment) error { return errNotLinux }
func (l *Lab) Stats() (aToB, bToA Stats)       { return Stats{}, Stats{} }
func (l *Lab) Errors() (reads, writes uint64)  { return 0, 0 }
func (l *Lab) Close() error                    { return errNotLinux }
