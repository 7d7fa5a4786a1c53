package diag

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// A GPU host's live QoS (marking, bytes and queue delay per class, the tc
// tree's counters) exists only in the process that runs it. The local API
// hands it out as JSON on GET /v1/qos: what its QoSFunc returns, which on a
// GPU host is the LiveQoS (livejson.go) of the host's QoSState.

// ErrNoQoS: the node answers but reports no QoS, because it serves no
// GPUs (gpumesh up) or its host has not started yet.
var ErrNoQoS = errors.New("diag: the node reports no QoS")

// A QoSFunc reports a node's QoS now, as a value encoding/json marshals.
type QoSFunc func() any

// SetQoS makes the local API answer GET /v1/qos with the JSON of what f
// returns at each request; nil makes it answer 404 again.
func (a *LocalAPI) SetQoS(f QoSFunc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.qos = f
}

func (a *LocalAPI) serveQoS(w http.ResponseWriter, r *http.Request) {
	if len(r.URL.Query()) != 0 {
		http.Error(w, "diag: /v1/qos takes no parameters", http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	f := a.qos
	a.mu.Unlock()
	if f == nil {
		http.Error(w, "this node serves no GPUs, or its host has not started yet", http.StatusNotFound)
		return
	}
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(f()); err != nil {
		http.Error(w, fmt.Sprintf("diag: encode QoS: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b.Bytes())
}

// QoS asks the running node for its live QoS: the JSON its QoSFunc
// returned. ErrNotRunning when no node answers on the socket; ErrNoQoS,
// with the node's reason, when it has none.
func (c LocalClient) QoS(ctx context.Context) (json.RawMessage, error) {
	var m json.RawMessage
	err := c.get(ctx, "qos", nil, &m)
	if se, ok := errors.AsType[*statusError](err); ok && se.code == http.StatusNotFound {
		return nil, fmt.Errorf("%w: %s", ErrNoQoS, se.body)
	}
	return m, err
}
